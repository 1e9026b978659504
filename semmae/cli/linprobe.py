"""`semmae-linprobe` (also `python -m semmae.linprobe`): probes of a frozen encoder (ckpt=...): the linear probe,
efficient probing (ep), the cross-attention probe (mhca) and k-NN (knn), one head or several (model.head=[...]), on one
block or several (model.block), for one seed or several (probe_seeds), and for a randomly initialised twin of the
encoder too (random_baseline=true). Seed -> datamodule -> encoder -> feature cache (every view the heads need, encoded
once per encoder and training subset, its memory said first) -> per head, block and seed: model -> callbacks ->
loggers -> trainer -> fit -> test best (k-NN: classify the cached features) -> one table, results.json."""

from __future__ import annotations

import copy
import gc
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, open_dict

from semmae.analysis.fixes import fix_encoder
from semmae.analysis.knn import check_knn, knn_accuracy
from semmae.analysis.probe_maps import probe_attention_figure
from semmae.analysis.probe_table import ProbeResult, aggregate, format_table, table
from semmae.cli.entry import hydra_entry
from semmae.cli.run_steps import (
    begin_run,
    build_trainer,
    check_ckpt_path,
    check_resume,
    finish_run,
    fit,
    prepare_datamodule,
    resolve_ckpt,
    scalar_metrics,
    test_best,
)
from semmae.data.cache_memory import cache_bytes, check_cache_memory
from semmae.data.feature_cache import FeatureDataModule, cache_indices
from semmae.errors import ConfigError
from semmae.models.block_tokens import probe_views, resolve_blocks, view_name
from semmae.models.loading import random_encoder
from semmae.models.probe_heads import ATTENTIVE, HEADS
from semmae.tasks.base import bf16_enabled, plain
from semmae.tasks.linprobe import CACHE_DTYPES, KNN_DEFAULTS, head_input
from semmae.tasks.settings import settings
from semmae.utils.plotting import log_image, save_figure

EVALUATIONS = (*HEADS, "knn")
FIGURE_IMAGES = 8


def probe_heads(setting: Any) -> list[str]:
    """model.head -> the heads in run order: one name or a list of them, each one of EVALUATIONS, once."""
    names = [setting] if isinstance(setting, str) else list(setting or [])
    bad = [n for n in names if n not in EVALUATIONS]
    if bad or not names:
        raise ConfigError(
            f"model.head={bad[0] if bad else names!r} is not a probe: choose one of "
            f"{', '.join(EVALUATIONS)}, or a list of them (model.head=[linear,ep,knn])"
        )
    return list(dict.fromkeys(names))


def cache_device(cfg: DictConfig) -> torch.device:
    """Where the feature cache lives: the device this process trains on (trainer.accelerator; under DDP its
    LOCAL_RANK's GPU)."""
    accelerator = cfg.trainer.get("accelerator", "auto")
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def probe_seeds(cfg: DictConfig) -> list[int]:
    seeds = plain(cfg.get("probe_seeds"))
    if seeds is None:
        return [int(cfg.seed)]
    if isinstance(seeds, int) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"probe_seeds={seeds!r}: a list of whole numbers, e.g. probe_seeds=[0,1,2]")
    return list(dict.fromkeys(seeds))


def low_shot_repeat(datamodule, batch: int) -> int:
    """Passes over a low-shot training set (dataset.train_per_class) an epoch: as many as give it the steps an epoch
    over the whole training split takes, so that a low-shot probe trains for the full run's number of steps; 1 for
    a run on the whole split."""
    pool, n = getattr(datamodule, "train_pool_size", None), datamodule.split_size("train")
    if not getattr(datamodule, "train_per_class", None) or not pool or not n:
        return 1
    return max(1, math.ceil(max(1, pool // datamodule.batch_size) * batch / n))


class ProbeRun:
    """One semmae-linprobe run: its settings, the encoders it probes and the results so far."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.heads = probe_heads(plain(cfg.model.head))
        self.seeds = probe_seeds(cfg)
        self.knn = settings("model.knn", KNN_DEFAULTS, plain(cfg.model.get("knn")))
        if isinstance(self.knn["neighbours"], int):
            self.knn["neighbours"] = [self.knn["neighbours"]]
        self.datamodule = prepare_datamodule(cfg)
        encoder = instantiate(cfg.model.encoder)
        self.blocks = resolve_blocks(plain(cfg.model.block), len(encoder.blocks))
        self.encoders = {"checkpoint": encoder}
        if cfg.get("random_baseline"):  # the same geometry, MAE's initialisation, seeded by the run's seed
            self.encoders["random_init"] = random_encoder({**plain(cfg.backbone), **encoder.config}, seed=cfg.seed)
        if cfg.dataset.get("train_per_class") is not None:
            self.datamodule.split_size("train")  # draws the low-shot subset: a size it cannot take fails now
        self.results: list[ProbeResult] = []
        self.fixes: dict[str, Any] = {}  # the training-free fixes (cfg.encoder) applied to each encoder
        self.extract_s = 0.0
        setting = cfg.model.feature_cache
        low_shot = cfg.dataset.get("train_per_class") is not None  # a few images: cached, whatever the data set
        self.cached = (
            (low_shot or bool(getattr(self.datamodule, "in_memory", False))) if setting == "auto" else bool(setting)
        )
        if cfg.model.cache_dtype not in CACHE_DTYPES:
            raise ConfigError(f"model.cache_dtype={cfg.model.cache_dtype!r}: one of {', '.join(CACHE_DTYPES)}")
        self.token_dtype = CACHE_DTYPES[cfg.model.cache_dtype]
        if "knn" in self.heads:  # a low-shot set's size is known now: a k it cannot take fails before any work
            n_train = self.datamodule.split_size("train") if cfg.dataset.get("train_per_class") is not None else None
            check_knn(self.knn["neighbours"], self.knn["temperature"], n_train)

    # --- what the run does -------------------------------------------------------------------------------------
    @property
    def single(self) -> bool:
        return len(self.heads) * len(self.blocks) * len(self.seeds) * len(self.encoders) == 1

    def tag(self, encoder: str, head: str, block: int, seed: int) -> str:
        parts = [
            encoder if len(self.encoders) > 1 else "",
            head if len(self.heads) > 1 else "",
            f"block{block}" if len(self.blocks) > 1 else "",
            f"seed{seed}" if len(self.seeds) > 1 else "",
        ]
        return "-".join(p for p in parts if p)

    def run_dir(self, tag: str) -> Path:
        out = Path(self.cfg.paths.output_dir)
        return out if self.single else out / "probes" / tag

    def datamodule_for(self, seed: int):
        """The datamodule of a probe seed: the run's own for its seed, else the same data seeded by seed (its
        training subset, e.g. dataset.train_per_class, drawn from it)."""
        if seed == int(self.cfg.dataset.get("seed", self.cfg.seed)):
            return self.datamodule
        dm = instantiate(self.cfg.dataset, seed=seed)
        dm.prepare_data()
        return dm

    def train_depends_on_seed(self) -> bool:
        return self.cfg.dataset.get("train_per_class") is not None or self.cfg.dataset.get("train_subset") is not None

    # --- encoding ----------------------------------------------------------------------------------------------
    def needs(self, heads: list[str]) -> tuple[bool, bool]:
        """(pooled, tokens): which views the heads read."""
        return (any(head_input(h) == "pooled" for h in heads), any(head_input(h) == "tokens" for h in heads))

    def views(self, encoder: torch.nn.Module, device: torch.device, heads: list[str]) -> dict:
        """The name -> (shape per image, dtype) of every view the heads read, of every block."""
        pooled, tokens = self.needs(heads)
        d, t = encoder.embed_dim, encoder.num_prefix_tokens + encoder.patch_embed.num_patches
        out = {}
        for k in self.blocks:
            if pooled:
                out[view_name("pooled", k)] = ((d,), torch.float32)
            if tokens:
                out[view_name("tokens", k)] = ((t, d), self.token_dtype)
        return out

    def encode_fn(self, encoder: torch.nn.Module, device: torch.device, heads: list[str]):
        pooled, tokens = self.needs(heads)
        bf16 = bf16_enabled(self.cfg.model.bf16, device)

        @torch.no_grad()
        def encode(images: torch.Tensor) -> dict[str, torch.Tensor]:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return probe_views(
                    encoder,
                    images,
                    self.blocks,
                    self.cfg.model.pool,
                    pooled=pooled,
                    tokens=tokens,
                    token_dtype=self.token_dtype,
                )

        return encode

    def build_cache(
        self, encoder: torch.nn.Module, datamodule, device: torch.device, heads: list[str], seed: int, val=None
    ) -> FeatureDataModule:
        """The cached views of the heads, the memory they take said (and checked) first."""
        views = self.views(encoder, device, heads)
        indices = cache_indices(datamodule, plain(self.cfg.model.cache_limits), seed)
        sizes = [len(indices[s]) if indices[s] is not None else datamodule.split_size(s) for s in ("train", "val")]
        if val is not None:
            sizes[1] = 0
        need = cache_bytes(sizes, views)
        line = check_cache_memory(
            need,
            self.cfg.model.cache_max_ram_share,
            device,
            fix=(
                "lower dataset.val_subset / dataset.train_subset, probe fewer blocks (model.block), "
                "read pooled features "
                "only (model.head=linear or knn), or stream the images (model.feature_cache=false)"
            ),
        )
        rank_zero_info(f"Feature cache: {sizes[0]:,} + {sizes[1]:,} images, {', '.join(views)}: {line}")
        t0 = time.time()
        encoder.to(device)
        batch = min(datamodule.batch_size, sizes[0]) if sizes[0] else datamodule.batch_size
        cache = FeatureDataModule.from_images(
            datamodule,
            self.encode_fn(encoder, device, heads),
            device,
            seed,
            limits=plain(self.cfg.model.cache_limits),
            view=next(iter(views)),
            val=val,
            batch_size=batch,
        )
        took = time.time() - t0
        self.extract_s += took
        rank_zero_info(f"Feature cache: encoded in {took:.0f} s")
        cache.train_repeat = low_shot_repeat(datamodule, cache.batch_size)
        return cache

    # --- the probes ----------------------------------------------------------------------------------------------
    def sub_config(self, tag: str) -> DictConfig:
        """The run's config with the run directory of one probe (callbacks and loggers write there)."""
        if self.single:
            return self.cfg
        cfg = copy.deepcopy(self.cfg)
        with open_dict(cfg):
            cfg.paths.output_dir = str(self.run_dir(tag))
        Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
        return cfg

    def train(self, encoder_name: str, encoder, head: str, block: int, seed: int, data, images, resume):
        """Fit and test one trained head; -> its ProbeResult (and the trainer, loggers)."""
        from lightning.pytorch import seed_everything

        tag = self.tag(encoder_name, head, block, seed)
        cfg = self.sub_config(tag)
        seed_everything(seed, workers=True, verbose=False)
        model = instantiate(self.cfg.model, encoder=encoder, head=head, block=block, batch_size=data.batch_size)
        check_resume(cfg, model, resume)
        trainer, loggers = build_trainer(cfg)
        if isinstance(data, FeatureDataModule):
            data = data.with_view(model.view, seed=seed)
        fit(trainer, model, data, cfg, resume)
        metrics, best = test_best(trainer, model, data)
        if head in ATTENTIVE:
            self.attention_figure(model, images, trainer, cfg, head)
        if not self.single:
            from semmae.cli.entry import finish_wandb

            finish_wandb(0)
        kept = metrics if self.single else {k: v for k, v in metrics.items() if k.startswith("test/")}
        result = ProbeResult(encoder_name, head, block, seed, kept, str(self.run_dir(tag)), best or None)
        return result, trainer, loggers

    def attention_figure(self, model, images, trainer, cfg: DictConfig, head: str) -> None:
        batch = next(iter(images.eval_batches("val", model.device, limit=FIGURE_IMAGES)))
        attention = model.attention(batch["image"])
        fig = probe_attention_figure(
            batch["image"],
            attention,
            model.encoder.patch_embed.grid_size,
            f"{head} probe: attention over the patches (block {model.block})",
            images.mean,
            images.std,
        )
        path = save_figure(fig, Path(cfg.paths.output_dir) / "figures" / f"{head}_attention.png")
        log_image(trainer, f"figures/{head}_attention", path)

    def knn_probe(self, encoder_name: str, block: int, seed: int, train, val) -> ProbeResult:
        """DINO's weighted k-NN on the pooled features (train, val: (features, labels))."""
        view = view_name("pooled", block)
        ks = check_knn(self.knn["neighbours"], self.knn["temperature"], len(train[1]))
        num_classes = int(self.cfg.model.num_classes)
        acc = knn_accuracy(train[0][view], train[1], val[0][view], val[1], num_classes, ks, self.knn["temperature"])
        main = int(self.knn["neighbours"][0])
        metrics = {f"test/{m}": v for m, v in acc[main].items()}
        for k in sorted(acc):
            metrics.update({f"test/{m}_k{k}": v for m, v in acc[k].items()})
        return ProbeResult(encoder_name, "knn", block, seed, metrics)

    def probe_encoder(self, name: str, encoder, device: torch.device, resume) -> tuple:
        """Every head, block and seed on one encoder; -> the last fit's (trainer, loggers), or (None, [])."""
        last, val, cache = (None, []), None, None
        for seed in self.seeds:
            dm = self.datamodule_for(seed)
            if self.cached:
                if cache is None or self.train_depends_on_seed():
                    cache = self.build_cache(encoder, dm, device, self.heads, seed, val=val)
                    val = cache.splits["val"]
                data = cache
            else:
                data = dm
                if "knn" in self.heads:  # k-NN reads every training feature: a pooled cache, streamed images
                    knn_cache = self.build_cache(encoder, dm, device, ["knn"], seed)
                train_size = dm.split_size("train")
                if train_size < dm.batch_size:  # a low-shot training split trains in one batch of all of it
                    dm.batch_size = max(1, train_size)
            for block in self.blocks:
                for head in self.heads:
                    if head == "knn":
                        source = cache if self.cached else knn_cache
                        self.results.append(
                            self.knn_probe(name, block, seed, source.splits["train"], source.splits["val"])
                        )
                        continue
                    result, trainer, loggers = self.train(name, encoder, head, block, seed, data, dm, resume)
                    self.results.append(result)
                    last = (trainer, loggers) if self.single else (None, [])  # no cache held past its encoder
        return last


def run(cfg: DictConfig) -> dict[str, float]:
    start = begin_run(cfg)
    source = resolve_ckpt(cfg)
    resume = check_ckpt_path(cfg.get("ckpt_path"))
    probes = ProbeRun(cfg)
    if resume is not None and not probes.single:
        raise ConfigError("ckpt_path resumes one probe: one model.head, one model.block, one seed, no random_baseline")
    device = cache_device(cfg)
    for name, encoder in probes.encoders.items():
        fixes = fix_encoder(cfg, encoder, probes.datamodule, device, task="linprobe")  # the same for both encoders
        if fixes:
            probes.fixes[name] = fixes
        trainer, loggers = probes.probe_encoder(name, encoder, device, resume)
        gc.collect()  # the encoder's cache goes before the next one's is built
    return report(cfg, probes, trainer, loggers, source, start)


@rank_zero_only
def print_table(text: str) -> None:
    print("\n" + text)


def report(
    cfg: DictConfig, probes: ProbeRun, trainer, loggers: list, source: str | None, start: float
) -> dict[str, float]:
    """One table of the probes (console), results.json (every probe, and the metrics collapsed over the seeds) and
    the summary lines."""
    results = probes.results
    metrics = dict(results[0].metrics) if probes.single else aggregate(results)
    print_table(format_table(table(results, int(probes.knn["neighbours"][0]))))
    best = results[0].best_checkpoint if probes.single else None
    fields = {
        "encoder_checkpoint": source or "random initialisation",
        "best_checkpoint": best or None,
        "feature_cache": probes.cached,
        "feature_extraction_s": round(probes.extract_s, 1),
        "heads": probes.heads,
        "blocks": probes.blocks,
        "seeds": probes.seeds,
        "train_per_class": plain(cfg.dataset.get("train_per_class")),
        "probes": [r.as_dict() for r in results],
        **({"training_free": probes.fixes["checkpoint"] if probes.single else probes.fixes} if probes.fixes else {}),
    }
    summary = {"encoder": source or "random initialisation (ckpt=null)"}
    if probes.single:
        top1, top5 = metrics.get("test/top1"), metrics.get("test/top5")
        summary.update(
            {
                "test top-1": f"{100 * top1:.2f}%" if top1 is not None else "-",
                "test top-5": f"{100 * top5:.2f}%" if top5 is not None else "-",
                "best checkpoint": best or "(none written)",
            }
        )
    else:
        where = Path(cfg.paths.output_dir) / "probes"
        summary["probes"] = f"{len(results)} ({', '.join(probes.heads)}; the table above; {where}/)"
    finish_run("linprobe", cfg, trainer, loggers, start, scalar_metrics(metrics), fields=fields, summary=summary)
    return metrics


main = hydra_entry("linprobe", run)

if __name__ == "__main__":
    main()
