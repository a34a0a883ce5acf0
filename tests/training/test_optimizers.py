"""``--optimizer``: AdamW as before, SGD with momentum, and MuonWithAdamW: its split of the parameters,
its steps against Muon and AdamW side by side, its state_dict and LR schedules."""

import io

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from lowcomm.models import build_model
from lowcomm.training.config import load_config, resolve
from lowcomm.training.optimizers import MuonWithAdamW, hidden_matrices, inner_optimizer

CPU = torch.device("cpu")


def names(model, params):
    by_id = {id(p): name for name, p in model.named_parameters()}
    return [by_id[id(p)] for p in params]


def test_muon_takes_gpt_tinys_hidden_matrices_and_adamw_the_rest():
    model = build_model("gpt-tiny", vocab_size=300)
    per_layer = ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"]
    assert names(model, hidden_matrices(model)) == [f"h.{i}.{m}.weight" for i in range(2) for m in per_layer]
    optimizer = inner_optimizer(resolve(load_config(overrides={"optimizer": "muon"})), model, CPU)
    adamw, muon = optimizer.param_groups
    assert (adamw["muon"], muon["muon"]) == (False, True)
    assert names(model, muon["params"]) == names(model, hidden_matrices(model))
    # the token embedding (also the tied output head), the positions, the norms and the biases
    rest = names(model, adamw["params"])
    assert rest[:2] == ["wte.weight", "wpe.weight"] and len(rest) == 2 + 2 * 10 + 2
    assert all(name.endswith(("ln_1.weight", "ln_2.weight", "bias")) for name in rest[2:-2])
    assert (adamw["lr"], muon["lr"], adamw["weight_decay"], muon["weight_decay"]) == (3e-3, 1e-3, 0.01, 0.01)


def test_an_untied_transformers_output_head_is_not_a_hidden_matrix(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=8, vocab_size=300, tie_word_embeddings=False,
               bos_token_id=None, eos_token_id=None).save_pretrained(tmp_path)
    model = build_model(f"hf:{tmp_path}", vocab_size=300)
    assert names(model, hidden_matrices(model)) == [
        f"model.transformer.h.0.{m}.weight" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
    ]
    assert "model.lm_head.weight" in dict(model.named_parameters())


def small_models():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    return model, [torch.nn.Parameter(p.detach().clone()) for p in model.parameters()]


def gradients(params, step):
    for i, p in enumerate(params):
        p.grad = torch.sin(torch.arange(p.numel(), dtype=torch.float32) * (step + 1) + i).reshape(p.shape)


def test_it_steps_exactly_as_muon_and_adamw_side_by_side():
    model, twins = small_models()
    params = list(model.parameters())
    composite = MuonWithAdamW([params[0]], params[1:], lr=0.01, muon_lr=0.02, weight_decay=0.1)
    muon = torch.optim.Muon([twins[0]], lr=0.02, weight_decay=0.1)
    adamw = torch.optim.AdamW(twins[1:], lr=0.01, weight_decay=0.1)
    for step in range(3):
        gradients(params, step)
        gradients(twins, step)
        composite.step()
        muon.step()
        adamw.step()
    for p, twin in zip(params, twins):
        assert torch.equal(p, twin)
    assert set(composite.state) == set(params)  # one state, of every parameter


def test_its_state_dict_resumes_exactly_and_schedules_scale_both_groups():
    def build(model):
        params = list(model.parameters())
        optimizer = MuonWithAdamW([params[0], params[2]], [params[1], params[3]], lr=0.01, muon_lr=0.02,
                                  weight_decay=0.1)
        return optimizer, LambdaLR(optimizer, lambda t: 1 / (t + 1))

    model, _ = small_models()
    optimizer, schedule = build(model)
    for step in range(2):
        gradients(list(model.parameters()), step)
        optimizer.step()
        schedule.step()
    assert [group["lr"] for group in optimizer.param_groups] == [0.01 * (1 / 3), 0.02 * (1 / 3)]
    saved = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()},
               saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=True)
    resumed, _ = small_models()
    resumed.load_state_dict(state["model"])
    resumed_optimizer, resumed_schedule = build(resumed)
    resumed_optimizer.load_state_dict(state["optimizer"])
    resumed_schedule.load_state_dict(state["schedule"])
    for step in range(2, 4):
        for m, o, s in ((model, optimizer, schedule), (resumed, resumed_optimizer, resumed_schedule)):
            gradients(list(m.parameters()), step)
            o.step()
            s.step()
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    resumed_optimizer.state.clear()  # what Local SGD does: Muon's and AdamW's state go with it
    assert not resumed_optimizer.muon.state and not resumed_optimizer.adamw.state


@pytest.mark.parametrize("choice", ["adamw", "sgd"])
def test_adamw_is_the_default_and_sgd_has_momentum(choice):
    model = build_model("gpt-tiny", vocab_size=300)
    optimizer = inner_optimizer(resolve(load_config(overrides={"optimizer": choice, "lr": "0.05"})), model, CPU)
    if choice == "adamw":
        expected = torch.optim.AdamW(model.parameters(), lr=0.05, weight_decay=0.01, fused=False)
    else:
        expected = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    assert type(optimizer) is type(expected) and optimizer.state_dict() == expected.state_dict()
    assert load_config().optimizer.name == "adamw" and resolve(load_config()).optimizer.muon_lr is None
