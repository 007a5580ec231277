"""Weights from the learner into vLLM servers, in memory, through vLLM's weight-transfer endpoints.

vLLM's servers (with `VLLM_SERVER_DEV_MODE=1` and `--weight-transfer-config`) expose the RL
control plane: /init_weight_transfer_engine, /start_weight_update, /update_weights,
/finish_weight_update. The data plane is a torch.distributed group between the learner (rank 0)
and the server's worker processes (ranks 1..W, W = tensor-parallel size): the learner broadcasts
tensors and the workers load them while the HTTP call that announced them is in flight.

- GPU: vLLM's stock "nccl" engine on the worker side; the learner side here broadcasts each
  tensor with vLLM's own NCCL communicator (unpacked mode, so the worker's receive loop matches).
- CPU: the stock nccl engine cannot run ("Cannot access accelerator device when none is
  available."), so this module adds a "gloo" engine, registered in vLLM's
  `WeightTransferEngineFactory` by rlvr's `vllm.general_plugins` entry point (pyproject.toml), which
  vLLM loads in every server process. It receives one packed byte buffer per chunk.

One group per worker server (not one spanning all servers): a server that dies breaks only its
own group, and a restarted server or a restarted learner just opens a new one.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

# torch dtypes by name, both ways (the update info carries names, as vLLM's nccl engine does)
_DTYPES = {str(d).split(".")[-1]: d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                               torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool)}


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16" (the name vLLM's update info uses)."""
    return str(dtype).split(".")[-1]


def open_group(address: str, port: int, rank: int, world: int, timeout_s: float) -> Any:
    """A gloo process group of `world` ranks outside torch's default group (rank 0 hosts the store).

    Outside the default group, so that neither side's own torch.distributed setup (the learner's
    FSDP/DDP group, vLLM's tensor-parallel group) is touched.
    """
    timeout = timedelta(seconds=timeout_s)
    store = torch.distributed.TCPStore(address, port, world, is_master=(rank == 0), timeout=timeout,
                                       wait_for_workers=False)
    return torch.distributed.ProcessGroupGloo(store, rank, world, timeout)


def pack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Tensors -> one flat uint8 buffer of their bytes, in order (one broadcast per chunk)."""
    return torch.cat([t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8) for t in tensors])


def unpack(buffer: torch.Tensor, dtypes: list[str], shapes: list[list[int]]) -> list[torch.Tensor]:
    """The inverse of `pack`: views into `buffer`, one per (dtype name, shape).

    Example: 2 float32 of shape [2] and 1 int64 of shape [1] use bytes 0-8, 8-16, 16-24.
    """
    out, start = [], 0
    for name, shape in zip(dtypes, shapes):
        dtype = _DTYPES[name]
        size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        out.append(buffer[start : start + size].view(dtype).reshape(shape))
        start += size
    return out


def refresh_tied_head(model: torch.nn.Module) -> None:
    """Rebuild the output head's kernel data when it shares the input embedding (CPU build).

    A tied head is not in the learner's tensors, so vLLM's reload never processes it: on the CPU
    build its matmul keeps a pre-packed copy of the *old* embedding (the sync probe shows a gap of
    several nats). Processing it again re-packs the shared, already updated tensor; on GPU the
    head reads the shared weight directly and this changes nothing.
    """
    head = getattr(model, "lm_head", None)
    weight = getattr(head, "weight", None)
    if weight is None or not hasattr(head, "quant_method"):
        return
    if any(m is not head and getattr(m, "weight", None) is weight for m in model.modules()):
        head.quant_method.process_weights_after_loading(head)


# ---- worker side: runs inside the vLLM server's worker processes -----------------------------

def _worker_engine_class() -> type:
    """The gloo engine class (built lazily: importing vLLM costs seconds, and only servers need it)."""
    from vllm.distributed.weight_transfer.base import (
        WeightTransferEngine,
        WeightTransferInitInfo,
        WeightTransferUpdateInfo,
    )

    @dataclass
    class GlooInitInfo(WeightTransferInitInfo):
        master_address: str
        master_port: int
        rank_offset: int
        world_size: int
        session: str
        timeout_s: float = 600.0

    @dataclass
    class GlooUpdateInfo(WeightTransferUpdateInfo):
        names: list[str]
        dtype_names: list[str]
        shapes: list[list[int]]
        session: str

    class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
        """vLLM weight-transfer engine over a gloo group (CPU servers): one packed buffer per chunk."""

        init_info_cls = GlooInitInfo
        update_info_cls = GlooUpdateInfo

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.group = None
            self.session = None

        def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
            self.shutdown()  # a restarted learner replaces the group of the one that died
            parallel = self.parallel_config
            rank = parallel.data_parallel_index * parallel.world_size + parallel.rank + init_info.rank_offset
            self.group = open_group(init_info.master_address, init_info.master_port, rank, init_info.world_size,
                                    init_info.timeout_s)
            self.session = init_info.session

        def start_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

            initialize_layerwise_reload(self.model)

        def update_weights(self, update_info: dict[str, Any]) -> None:
            # the base class ends with torch.accelerator.synchronize(), which raises without an accelerator
            self.receive_weights(self.parse_update_info(update_info))

        def receive_weights(self, update_info: GlooUpdateInfo) -> None:
            if self.group is None or update_info.session != self.session:
                # refuse before blocking in a receive that no learner will ever send
                raise RuntimeError(f"gloo weight transfer: update for session {update_info.session!r}, but this "
                                   f"server's group is {self.session!r} (call /init_weight_transfer_engine)")
            sizes = [torch.Size(s).numel() * torch.empty((), dtype=_DTYPES[d]).element_size()
                     for d, s in zip(update_info.dtype_names, update_info.shapes)]
            buffer = torch.empty(sum(sizes), dtype=torch.uint8)
            self.group.broadcast(buffer, 0).wait()
            tensors = unpack(buffer, update_info.dtype_names, update_info.shapes)
            self.model.load_weights(list(zip(update_info.names, tensors)))

        def finish_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

            finalize_layerwise_reload(self.model, self.model_config)
            refresh_tied_head(self.model)

        def shutdown(self) -> None:
            self.group = None
            self.session = None

    return GlooWeightTransferEngine


def register_vllm_plugin() -> None:
    """vLLM general plugin (entry point `vllm.general_plugins`): register the "gloo" transfer engine.

    vLLM calls it once in each of its processes; registering twice raises, hence the check.
    """
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    if "gloo" not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine("gloo", _worker_engine_class())


# ---- learner side ------------------------------------------------------------------------------

def free_port(host: str) -> int:
    """A TCP port that is free on `host` now (the store binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def address_towards(url_host: str) -> str:
    """This machine's address on the interface that routes to `url_host` (what the server dials back).

    Example: a server on 127.0.0.1 -> "127.0.0.1"; one on 10.0.0.7 -> this host's 10.0.x.y address.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((socket.gethostbyname(url_host), 9))  # UDP connect sends nothing, it only picks a route
        return s.getsockname()[0]


@dataclass
class Chunk:
    """Tensors announced by one /update_weights call and sent by one round of broadcasts."""

    names: list[str]
    tensors: list[torch.Tensor]

    def update_info(self, backend: str, session: str) -> dict[str, Any]:
        """The body of the worker's /update_weights call announcing this chunk (names, dtypes, shapes;
        the gloo engine also takes the session that pairs it with its process group)."""
        info = {"names": self.names, "dtype_names": [dtype_name(t.dtype) for t in self.tensors],
                "shapes": [list(t.shape) for t in self.tensors]}
        return {**info, "session": session} if backend == "gloo" else info


def chunks(pairs: Iterable[tuple[str, torch.Tensor]], max_bytes: int) -> Iterator[Chunk]:
    """Group (name, tensor) pairs into chunks of at most `max_bytes` (a bigger tensor goes alone).

    Bounded memory: at most one chunk of full tensors is held at a time.
    Example: sizes 4, 4, 8 bytes with max_bytes 8 -> chunks [a, b], [c].
    """
    names, tensors, size = [], [], 0
    for name, tensor in pairs:
        nbytes = tensor.numel() * tensor.element_size()
        if tensors and size + nbytes > max_bytes:
            yield Chunk(names, tensors)
            names, tensors, size = [], [], 0
        names.append(name)
        tensors.append(tensor.detach())
        size += nbytes
    if tensors:
        yield Chunk(names, tensors)


class TransferLink:
    """The learner's end of one server's transfer group (the learner is rank 0).

    `open` drives /init_weight_transfer_engine through vLLM's `HTTPVLLMWeightSyncClient`; `send`
    announces a chunk with /update_weights and broadcasts its tensors while that call waits.
    """

    def __init__(self, url: str, backend: str, world_size: int, timeout_s: float):
        from vllm.distributed.weight_transfer.clients import HTTPVLLMWeightSyncClient

        self.url = url
        self.backend = backend
        self.world = 1 + world_size
        self.timeout_s = timeout_s
        self.client = HTTPVLLMWeightSyncClient(url, timeout=timeout_s)
        self.session = secrets.token_hex(8)
        self.group: Any = None

    def open(self) -> None:
        """Rendezvous with the server's workers (the server blocks in the call until they joined)."""
        from urllib.parse import urlparse

        host = address_towards(urlparse(self.url).hostname or "127.0.0.1")
        port = free_port(host)
        info: dict[str, Any] = {"master_address": host, "master_port": port, "rank_offset": 1,
                                "world_size": self.world}
        if self.backend == "gloo":
            info.update(session=self.session, timeout_s=self.timeout_s)
        with ThreadPoolExecutor(max_workers=1) as pool:
            done = pool.submit(self.client.init_weight_transfer_engine, info)
            if self.backend == "gloo":
                self.group = open_group(host, port, 0, self.world, self.timeout_s)
            else:
                from vllm.distributed.weight_transfer.nccl_common import trainer_init

                self.group = trainer_init({"master_address": host, "master_port": port, "world_size": self.world})
            done.result()

    def send(self, chunk: Chunk, pool: ThreadPoolExecutor) -> None:
        """Announce `chunk` to the server and broadcast it; raises if either side fails."""
        announced = pool.submit(self.client.update_weights, chunk.update_info(self.backend, self.session))
        if self.backend == "gloo":
            self.group.broadcast(pack(chunk.tensors), 0).wait()
        else:
            stream = torch.cuda.current_stream()
            for t in chunk.tensors:
                self.group.broadcast(t.contiguous(), src=0, stream=stream)
            stream.synchronize()
        announced.result()

    def close(self) -> None:
        """Drop the learner's end (the server drops its own on the next init or shutdown)."""
        self.group = None

