"""Bottleneck (Houlsby-style) adapters on the sub-layers of a stock Hugging Face T5 (Geng et al. 2023).

Config + layer + injector, no copied T5 code: ``inject_adapters`` attaches an
``AdapterController`` as a child named ``adapter`` to each targeted stock module and registers a forward
hook that replaces the module's output ``y`` with ``y + Adapter(y)``. The targeted modules are the ones
whose output is the sub-layer output *before* the block residual, so the placement is exactly VIP5's
``x = x + Dropout(y + Adapter(y))`` with ``y = SubLayer(LN(x))``:

=====================  ===========================================================
site                   stock module (output hooked)
=====================  ===========================================================
encoder_self_attn      ``T5LayerSelfAttention.SelfAttention`` (``output[0]``)
encoder_ffn            ``T5LayerFF.DenseReluDense``
decoder_self_attn      ``T5LayerSelfAttention.SelfAttention`` (``output[0]``)
decoder_cross_attn     ``T5LayerCrossAttention.EncDecAttention`` (``output[0]``)
decoder_ffn            ``T5LayerFF.DenseReluDense``
=====================  ===========================================================

Stock parameter names are untouched (a t5 state dict still loads); every adapter parameter has a
``.adapter.`` component (see ``is_adapter_parameter``).

Task routing: with ``shared=True`` one adapter per site serves all tasks (the script
setting). With per-task adapters each batch row is routed to its own task's adapter
(``route="per_sample"``); ``route="first"`` reproduces the original, which used the first sample's task
for the whole batch. Task ids are set per call with the ``adapter_tasks`` context manager. When a
sub-layer sees ``k`` times more rows than task ids (beam search, candidate scoring), the ids are
expanded with ``repeat_interleave(k)``, which is how HF ``generate`` expands its inputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.models.t5.modeling_t5 import T5LayerCrossAttention, T5LayerFF, T5LayerSelfAttention

SITES: tuple[str, ...] = ("encoder_self_attn", "encoder_ffn", "decoder_self_attn", "decoder_cross_attn", "decoder_ffn")
SELF_ATTN_SITES: tuple[str, ...] = ("encoder_self_attn", "decoder_self_attn")
TASKS: tuple[str, ...] = ("sequential", "direct", "explanation")
ADAPTER_ATTR = "adapter"
"""Name of the child module that holds a site's adapters; every adapter parameter name contains it."""

TaskSpec = str | Sequence[str] | Sequence[int] | torch.Tensor | None


@dataclass(frozen=True)
class AdapterConfig:
    """Bottleneck adapters on T5 sub-layers (as in VIP5).

    Attributes:
        reduction_factor: bottleneck width is ``d_model // reduction_factor`` (the VIP5 script uses 8).
        sites: which sub-layer kinds get an adapter, from ``SITES``. All five = 30 sites for 6+6 layers.
        shared: one adapter per site for all tasks (VIP5 ``--use_single_adapter``); False = one per task.
        tasks: task names that own an adapter when ``shared`` is False.
        route: per-task routing. ``"per_sample"`` (improved) routes every batch row by its own task;
            ``"first"`` (faithful) uses the first row's task for the whole batch.
        activation: a ``transformers.activations.ACT2FN`` key; VIP5 uses ``gelu_new``.
        init: ``"near_identity"`` (improved) zero-inits the up-projection so the model at step 0 equals the
            backbone; ``"default"`` (faithful) keeps PyTorch's ``nn.Linear`` init.
    """

    reduction_factor: int = 8
    sites: tuple[str, ...] = SITES
    shared: bool = True
    tasks: tuple[str, ...] = TASKS
    route: Literal["per_sample", "first"] = "per_sample"
    activation: str = "gelu_new"
    init: Literal["default", "near_identity"] = "near_identity"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", tuple(self.sites))
        object.__setattr__(self, "tasks", tuple(self.tasks))
        if self.reduction_factor < 1:
            raise ValueError(f"reduction_factor must be >= 1, got {self.reduction_factor}")
        unknown = [s for s in self.sites if s not in SITES]
        if unknown or not self.sites:
            raise ValueError(f"sites must be a non-empty subset of {SITES}, got {self.sites}")
        if len(set(self.sites)) != len(self.sites):
            raise ValueError(f"duplicate sites in {self.sites}")
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks must be non-empty and unique, got {self.tasks}")
        if self.route not in ("per_sample", "first"):
            raise ValueError(f"route must be 'per_sample' or 'first', got {self.route!r}")
        if self.init not in ("default", "near_identity"):
            raise ValueError(f"init must be 'default' or 'near_identity', got {self.init!r}")
        if self.activation not in ACT2FN:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {sorted(ACT2FN)}")


class BottleneckAdapter(nn.Module):
    """``x + up(act(down(x)))`` with ``down: d -> d/r`` and ``up: d/r -> d`` (both with bias, no LayerNorm)."""

    def __init__(self, d_model: int, reduction_factor: int, activation: str = "gelu_new", init: str = "near_identity"):
        super().__init__()
        bottleneck = max(1, d_model // reduction_factor)
        self.down = nn.Linear(d_model, bottleneck)
        self.act = ACT2FN[activation]
        self.up = nn.Linear(bottleneck, d_model)
        if init == "near_identity":
            # Zero up-projection: the adapter is the identity at step 0, the down-projection keeps its random
            # init so the up-projection receives a non-zero gradient (LoRA-style).
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


class TaskRouter:
    """Current per-row task ids, shared by every adapter site of one model (a plain object, not a module)."""

    def __init__(self, tasks: Sequence[str], route: str):
        self.tasks = tuple(tasks)
        self.route = route
        self._ids: torch.Tensor | None = None  # [rows] on CPU; None = unset
        self._broadcast: int | None = None  # one task for every row, whatever the row count
        self._groups_cache: dict[tuple[int, str], tuple[list, torch.Tensor | None]] = {}

    def to_ids(self, tasks: TaskSpec) -> tuple[torch.Tensor | None, int | None]:
        """Normalise a task spec to (per-row ids, broadcast id)."""
        if tasks is None:
            return None, None
        if isinstance(tasks, str):
            return None, self._index(tasks)
        if isinstance(tasks, torch.Tensor):
            ids = tasks.detach().to("cpu", torch.long).reshape(-1)
        else:
            ids = torch.tensor([self._index(t) if isinstance(t, str) else int(t) for t in tasks], dtype=torch.long)
        if ids.numel() == 0:
            raise ValueError("empty task list")
        if int(ids.min()) < 0 or int(ids.max()) >= len(self.tasks):
            raise ValueError(f"task ids must be in [0, {len(self.tasks)}), got {ids.tolist()}")
        if self.route == "first":
            return None, int(ids[0])
        return ids, None

    def _index(self, task: str) -> int:
        try:
            return self.tasks.index(task)
        except ValueError:
            raise ValueError(f"unknown task {task!r}; adapters exist for {self.tasks}") from None

    @contextmanager
    def use(self, tasks: TaskSpec) -> Iterator[None]:
        previous = (self._ids, self._broadcast, self._groups_cache)
        self._ids, self._broadcast = self.to_ids(tasks)
        self._groups_cache = {}
        try:
            yield
        finally:
            self._ids, self._broadcast, self._groups_cache = previous

    def groups(
        self, rows: int, device: torch.device
    ) -> tuple[list[tuple[int, torch.Tensor | None]], torch.Tensor | None]:
        """Route a tensor with ``rows`` rows: ([(task index, row indices), ...], inverse permutation).

        One task for all rows comes back as ``([(task, None)], None)``: no gather needed.
        """
        if self._broadcast is not None:
            return [(self._broadcast, None)], None
        if self._ids is None:
            raise RuntimeError(
                "per-task adapters need task ids: pass tasks=... to the model call or wrap it in adapter_tasks(...)"
            )
        key = (rows, str(device))
        if key not in self._groups_cache:
            n = self._ids.numel()
            if rows % n:
                raise ValueError(f"{rows} rows cannot be routed with {n} task ids (rows must be a multiple)")
            ids = self._ids.repeat_interleave(rows // n) if rows != n else self._ids
            present = ids.unique().tolist()
            if len(present) == 1:
                self._groups_cache[key] = ([(present[0], None)], None)
            else:
                index = [torch.nonzero(ids == t).flatten() for t in present]
                inverse = torch.argsort(torch.cat(index)).to(device)
                self._groups_cache[key] = ([(t, idx.to(device)) for t, idx in zip(present, index)], inverse)
        return self._groups_cache[key]


class AdapterController(nn.Module):
    """The adapters of one site: one shared adapter, or one per task routed by a ``TaskRouter``."""

    def __init__(self, d_model: int, cfg: AdapterConfig, router: TaskRouter | None):
        super().__init__()
        make = lambda: BottleneckAdapter(d_model, cfg.reduction_factor, cfg.activation, cfg.init)  # noqa: E731
        if cfg.shared:
            self.shared = make()
            self.tasks = None
        else:
            self.shared = None
            self.tasks = nn.ModuleDict({name: make() for name in cfg.tasks})
        self.task_names = cfg.tasks
        self.router = router

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if self.shared is not None:
            return self.shared(y)
        groups, inverse = self.router.groups(y.shape[0], y.device)
        if inverse is None:
            return self.tasks[self.task_names[groups[0][0]]](y)
        # Rows grouped by task, each group through its own adapter, then put back in row order.
        parts = [self.tasks[self.task_names[t]](y.index_select(0, idx)) for t, idx in groups]
        return torch.cat(parts, 0).index_select(0, inverse)


def _adapter_output_hook(module: nn.Module, args: tuple, output):
    adapter = getattr(module, ADAPTER_ATTR)
    if isinstance(output, tuple):  # T5Attention returns (attn_output, position_bias, attn_weights)
        return (adapter(output[0]),) + tuple(output[1:])
    return adapter(output)


def adapter_sites(t5: nn.Module) -> Iterator[tuple[str, str, nn.Module]]:
    """(site kind, qualified module name, stock module) for every adaptable sub-layer of a stock T5."""
    for stack_name in ("encoder", "decoder"):
        stack = getattr(t5, stack_name, None)
        if stack is None:
            continue
        for b, block in enumerate(stack.block):
            for i, layer in enumerate(block.layer):
                prefix = f"{stack_name}.block.{b}.layer.{i}"
                if isinstance(layer, T5LayerSelfAttention):
                    yield f"{stack_name}_self_attn", f"{prefix}.SelfAttention", layer.SelfAttention
                elif isinstance(layer, T5LayerCrossAttention):
                    yield "decoder_cross_attn", f"{prefix}.EncDecAttention", layer.EncDecAttention
                elif isinstance(layer, T5LayerFF):
                    yield f"{stack_name}_ffn", f"{prefix}.DenseReluDense", layer.DenseReluDense


def inject_adapters(t5: nn.Module, cfg: AdapterConfig) -> list[AdapterController]:
    """Attach adapters to the ``cfg.sites`` sub-layers of a stock ``T5ForConditionalGeneration`` in place.

    Returns the new controllers (one per site). All of them share one ``TaskRouter``.
    """
    router = None if cfg.shared else TaskRouter(cfg.tasks, cfg.route)
    d_model = t5.config.d_model
    controllers = []
    for kind, name, module in adapter_sites(t5):
        if kind not in cfg.sites:
            continue
        if hasattr(module, ADAPTER_ATTR):
            raise ValueError(f"{name} already has an adapter")
        ref = next(module.parameters())
        controller = AdapterController(d_model, cfg, router).to(device=ref.device, dtype=ref.dtype)
        module.add_module(ADAPTER_ATTR, controller)
        module.register_forward_hook(_adapter_output_hook)
        controllers.append(controller)
    if not controllers:
        raise ValueError(f"no adapter site found for {cfg.sites}")
    return controllers


def is_adapter_parameter(name: str) -> bool:
    """True for parameter names created by ``inject_adapters``."""
    return ADAPTER_ATTR in name.split(".")


@contextmanager
def adapter_tasks(model: nn.Module, tasks: TaskSpec) -> Iterator[None]:
    """Set the per-row task ids used by the per-task adapters of ``model`` inside the block.

    ``tasks``: a task name for every row, a sequence of names or task indices (one per batch row), a tensor of
    task indices, or None (no-op). Shared adapters ignore it.
    """
    routers = {id(m.router): m.router for m in model.modules() if isinstance(m, AdapterController) and m.router}
    if tasks is None or not routers:
        yield
        return
    with _use_all(list(routers.values()), tasks):
        yield


@contextmanager
def _use_all(routers: list[TaskRouter], tasks: TaskSpec) -> Iterator[None]:
    if not routers:
        yield
        return
    with routers[0].use(tasks), _use_all(routers[1:], tasks):
        yield
