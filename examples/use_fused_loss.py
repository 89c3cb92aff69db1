"""Use rrm_fast's fused RRM loss in your own PyTorch training loop.

A frozen teacher (in practice: your adversarially trained model) hands its penultimate
features to a student trained on clean inputs only; the student's loss is
    0.005 * cross-entropy  -  1.0 * mean cosine(student features, teacher features).
On CUDA the feature term runs the fused Triton kernel; on CPU the PyTorch reference.
Run:  python examples/use_fused_loss.py
"""
import torch
import torch.nn as nn

import rrm_fast


class SmallNet(nn.Module):
    """Returns (logits, penultimate features): RRMLoss needs both."""

    def __init__(self, width: int, feature_dim: int = 64, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, width), nn.ReLU(), nn.Linear(width, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x):
        features = self.body(x)
        return self.head(features), features


def main(steps: int = 40, batch_size: int = 64, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    teacher = SmallNet(width=256).to(device).eval()  # load your robust teacher's weights here
    teacher.requires_grad_(False)
    student = SmallNet(width=128).to(device)

    criterion = rrm_fast.RRMLoss(xent_weight=0.005, feat_weight=1.0, kind="cosine")
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)

    images = torch.rand(1024, 1, 28, 28)  # stand-in for your dataset
    labels = torch.randint(0, 10, (1024,))

    losses = []
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch_size,))
        x, y = images[idx].to(device), labels[idx].to(device)
        with torch.no_grad():  # frozen teacher: no teacher gradient is ever computed
            _, teacher_features = teacher(x)
        logits, student_features = student(x)
        loss = criterion(logits, y, student_features, teacher_features)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    backend = rrm_fast.ops.feature_matching_backend(torch.device(device).type)
    print(f"RRM loss {losses[0]:.4f} -> {losses[-1]:.4f} after {steps} steps ({device}, feature-matching backend: {backend})")
    return losses


if __name__ == "__main__":
    main()
