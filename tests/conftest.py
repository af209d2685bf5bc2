import numpy as np
import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running (real-data accuracy, big builds)")
    config.addinivalue_line("markers", "arm_emulated: runs on the emulated aarch64 board "
                            "(qemu-user-static, cross compilers; f8tvm.emulated_board)")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


class SmallNet(torch.nn.Module):
    """conv-bn-relu, depthwise conv + ReLU6, residual add, maxpool, global pool, linear."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        z = torch.nn.functional.relu6(self.dw(y))
        y = self.grouped(z) + y
        y = self.pool(torch.relu(y))
        y = torch.nn.functional.adaptive_avg_pool2d(y, 1)
        return self.fc(torch.flatten(y, 1))


def make_small_net():
    net = SmallNet().eval()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-0.5, 0.5)
        net.bn1.running_var.uniform_(0.5, 2.0)
        net.bn1.weight.uniform_(0.5, 1.5)
        net.bn1.bias.uniform_(-0.2, 0.2)
    return net


@pytest.fixture
def small_net():
    return make_small_net()
