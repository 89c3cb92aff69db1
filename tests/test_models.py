"""Model zoo: feature shapes, the projection, the feature tap, head copying."""
import pytest
import torch
import torch.nn as nn

from rrm_fast.models import ARCHS, FeatureTap, attach_projection, copy_head, create_model

SMALL = {"cnn_small": (1, 28), "cnn_wide": (1, 28), "cnn_wide256": (1, 28), "resnet_small": (1, 28), "preact_resnet18": (3, 32), "resnet18": (3, 32),
         "vgg11": (3, 32), "vgg16": (3, 32)}
BIG = {"resnet50": (3, 32, 2048), "wrn34_10": (3, 32, 640)}


@pytest.mark.parametrize("arch", list(SMALL))
def test_features_logits_and_projection(arch):
    c, s = SMALL[arch]
    m = create_model(arch, num_classes=7, in_channels=c, mean=(0.3,) * c, std=(0.2,) * c, image_size=s).eval()
    x = torch.rand(3, c, s, s)
    logits, phi = m(x, return_features=True)
    assert logits.shape == (3, 7) and phi.shape == (3, m.feature_dim)
    # phi is exactly the classifier's input
    torch.testing.assert_close(m.classifier(phi), logits)
    assert attach_projection(m, 33) and m.feature_dim == 33
    logits, phi = m(x, return_features=True)
    assert phi.shape == (3, 33) and logits.shape == (3, 7)
    torch.testing.assert_close(m.classifier(phi), logits)
    assert not attach_projection(m, 33)  # already the right width


@pytest.mark.parametrize("arch", list(BIG))
def test_big_models_feature_width(arch):
    c, s, width = BIG[arch]
    m = create_model(arch, num_classes=10, in_channels=c, image_size=s).eval()
    with torch.no_grad():
        logits, phi = m(torch.rand(1, c, s, s), return_features=True)
    assert phi.shape == (1, width) == (1, m.feature_dim) and logits.shape == (1, 10)


def test_normalisation_lives_inside_the_model():
    m = create_model("cnn_small", mean=(0.5,), std=(0.25,))
    x = torch.rand(2, 1, 28, 28)
    expected = m.fc(m.proj(m.backbone((x - 0.5) / 0.25)))
    torch.testing.assert_close(m(x), expected)


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown architecture 'nope'"):
        create_model("nope")


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(12, 9), nn.ReLU())
        self.head = nn.Linear(9, 4)

    def forward(self, x):
        return self.head(self.body(x))


def test_feature_tap_any_module_input_and_output():
    net = Plain()
    x = torch.rand(5, 3, 2, 2)
    tap_in = FeatureTap(net, "head", use="input")
    logits, phi = tap_in(x, return_features=True)
    torch.testing.assert_close(phi, net.body(x))
    torch.testing.assert_close(logits, net(x))
    tap_out = FeatureTap(Plain(), "body.1", use="output")
    assert tap_out(x, return_features=True)[1].shape == (5, 9)
    with pytest.raises(ValueError, match="layer 'missing' not found"):
        FeatureTap(Plain(), "missing")


def test_feature_tap_projection_feeds_new_classifier():
    tap = FeatureTap(Plain(), "head", use="input")
    tap.input_size = (3, 2, 2)
    assert tap.feature_dim == 9 and tap.num_classes == 4
    tap.add_projection(6)
    logits, phi = tap(torch.rand(2, 3, 2, 2), return_features=True)
    assert phi.shape == (2, 6) and logits.shape == (2, 4)
    torch.testing.assert_close(tap.classifier(phi), logits)


def test_copy_head_through_projection():
    teacher = create_model("cnn_small")
    student = create_model("resnet18", in_channels=1, mean=(0.5,), std=(0.5,))  # phi 512 -> projected to 128
    assert attach_projection(student, teacher.feature_dim)
    copy_head(student, teacher)
    torch.testing.assert_close(student.classifier.weight, teacher.classifier.weight)
    other = create_model("resnet18", in_channels=1, mean=(0.5,), std=(0.5,))
    with pytest.raises(ValueError, match="equal classifier shapes"):
        copy_head(other, teacher)


def test_every_arch_listed():
    assert set(SMALL) | set(BIG) == set(ARCHS)
