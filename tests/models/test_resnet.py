import pytest
import torch
import torch.nn.functional as F

from lowcomm.models import ResNet18
from tests.models.probes import count_parameters


def test_logits_shape():
    images = torch.randn(2, 3, 32, 32)
    assert ResNet18()(images).shape == (2, 10)
    assert ResNet18(num_classes=100)(images).shape == (2, 100)


def test_stages_halve_32_pixels_down_to_4():
    model = ResNet18()
    features = model.blocks(model.stem(torch.randn(2, 3, 32, 32)))
    assert features.shape == (2, 512, 4, 4)


def test_parameter_count():
    # stem 3*64*9 + 128; stage 1: 2 * (2*64*64*9 + 256); stage 2: 64*128*9 + 128*128*9 + 512 +
    # 64*128 + 256 (shortcut), then 2*128*128*9 + 512; likewise stages 3, 4; fc 512*10 + 10
    # -> 1856 + 147_968 + 525_568 + 2_099_712 + 8_393_728 + 5130
    assert count_parameters(ResNet18()) == 11_173_962


def test_sgd_steps_fit_a_fixed_batch():
    torch.manual_seed(0)
    model = ResNet18()
    images, labels = torch.randn(4, 3, 32, 32), torch.arange(4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="num_classes"):
        ResNet18(num_classes=0)
    with pytest.raises(ValueError, match="images"):
        ResNet18()(torch.randn(2, 1, 32, 32))
