"""Shared by the digit probe scripts: the patch under a pixel, and one seeded probe fit."""
import torch

SIDE, PATCH = 24, 14


def patch_at(x, y) -> int:
    """Raster index of the 14-px patch under pixel (x, y)."""
    return int(y // PATCH) * SIDE + int(x // PATCH)


def probe(Xt, yt, Xv, yv, kind="linear"):
    """(validation, training) accuracy of a probe fitted on per-column standardised Xt: 400 full-batch AdamW steps
    at lr 1e-3, seed 0; "linear" (weight decay 0.5) or "mlp" (512 hidden, GELU, dropout 0.3; weight decay 0.05)."""
    torch.manual_seed(0)
    Xt, Xv = Xt.float(), Xv.float()
    mu, sd = Xt.mean(0), Xt.std(0) + 1e-6
    Xt, Xv = (Xt - mu) / sd, (Xv - mu) / sd
    d = Xt.shape[1]
    net = torch.nn.Linear(d, 10) if kind == "linear" else torch.nn.Sequential(
        torch.nn.Linear(d, 512), torch.nn.GELU(), torch.nn.Dropout(0.3), torch.nn.Linear(512, 10))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.5 if kind == "linear" else 0.05)
    for _ in range(400):
        net.train()
        loss = torch.nn.functional.cross_entropy(net(Xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        return (net(Xv).argmax(1) == yv).float().mean().item(), (net(Xt).argmax(1) == yt).float().mean().item()


def grid_and_block(feats, mean, std):
    """A scene's cached features standardised as a (24, 24, C) grid, and ``block(r, c)``: the 2 × 2 block of patch
    (r, c) — itself, left, upper, upper-left; zeros off the image — concatenated (4C)."""
    import torch.nn.functional as F

    x = ((feats.float() - mean) / std).view(SIDE, SIDE, -1)
    xp = F.pad(x.permute(2, 0, 1), (1, 0, 1, 0)).permute(1, 2, 0)  # zero row above, zero column left

    def block(r, c):
        return torch.cat([xp[r + 1, c + 1], xp[r + 1, c], xp[r, c + 1], xp[r, c]])

    return x, block
