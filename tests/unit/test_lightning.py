"""SparsityCallback: a tiny Lightning Trainer run on CPU keeps exact masks, zero weights outside
them, zero optimizer state outside them, and resumes its masks from a Lightning checkpoint."""

from __future__ import annotations

import pytest
import torch
from torch import nn

L = pytest.importorskip("lightning")

from sparsetrain.integrations.lightning import CHECKPOINT_KEY, SparsityCallback  # noqa: E402


class TinyModule(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
        )

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def loader(n=160, batch=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4].argmax(1)).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


def trainer(tmp_path, max_epochs, callbacks, **kw):
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=callbacks,
        **kw,
    )


def check_exact(cb, module):
    ctl = cb.controller
    params = dict(module.named_parameters())
    opt_state = module.trainer.optimizers[0].state
    for name, mask in ctl.masks.items():
        assert int(mask.sum()) == ctl.layers[name].budget, f"{name}: budget drifted"
        assert not params[name][~mask].any(), f"{name}: a masked weight is not zero"
        buf = opt_state[params[name]]["momentum_buffer"]
        assert not buf[~mask].any(), f"{name}: optimizer state outside the mask is not zero"
    assert ctl.density() == pytest.approx(0.25, abs=1e-3)


@pytest.mark.parametrize(
    ("method", "options"),
    [("RigL", {"interval": 5}), ("SET", {})],  # step_end and epoch_end updates
)
def test_fit_keeps_masks_exact_and_weights_zero(tmp_path, method, options):
    torch.manual_seed(0)
    module = TinyModule()
    cb = SparsityCallback(method, density=0.25, init="ERK", **options)
    trainer(tmp_path, 3, [cb], enable_checkpointing=False).fit(module, loader())
    ctl = cb.controller
    assert ctl.step_count == 30  # 3 epochs x 10 optimizer steps
    assert ctl.update_log, "no mask update happened"
    assert any(u["changed_fraction"] > 0 for u in ctl.update_log)
    check_exact(cb, module)
    # the hooks are gone after fit: a plain optimizer step no longer counts
    module.trainer.optimizers[0].step()
    assert ctl.step_count == 30


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    torch.manual_seed(0)
    module = TinyModule()
    cb = SparsityCallback("RigL", density=0.25, interval=2)
    trainer(tmp_path, 2, [cb], enable_checkpointing=False, accumulate_grad_batches=2).fit(
        module, loader()
    )
    assert cb.controller.total_steps == 10  # 2 epochs x 10 batches / 2
    assert cb.controller.step_count == 10
    check_exact(cb, module)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    module = TinyModule()
    ckpt_cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpts", save_last=True)
    cb = SparsityCallback("RigL", density=0.25, interval=4)
    trainer(tmp_path, 1, [cb, ckpt_cb]).fit(module, loader())
    path = tmp_path / "ckpts" / "last.ckpt"
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved[CHECKPOINT_KEY]["step"] == 10
    masks = {n: m.clone() for n, m in cb.controller.masks.items()}
    weights = {n: p.detach().clone() for n, p in module.named_parameters()}

    # a fresh process: new module, new callback, resume from the checkpoint
    torch.manual_seed(123)  # different init: masks and weights must come from the checkpoint
    module2 = TinyModule()
    cb2 = SparsityCallback("RigL", density=0.25, interval=4)
    resumed = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            resumed["masks"] = {n: m.clone() for n, m in cb2.controller.masks.items()}
            resumed["weights"] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
            resumed["step"] = cb2.controller.step_count

    trainer(tmp_path, 2, [cb2, Probe()], enable_checkpointing=False).fit(
        module2, loader(), ckpt_path=path
    )
    assert resumed["step"] == 10
    for name, mask in masks.items():
        assert torch.equal(resumed["masks"][name], mask)
    for name, w in weights.items():
        assert torch.equal(resumed["weights"][name], w), f"{name} changed on resume"
    assert cb2.controller.step_count == 20
    check_exact(cb2, module2)
