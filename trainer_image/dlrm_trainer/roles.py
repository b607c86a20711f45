"""The three roles as process main functions: start, register in Redis, serve or train, exit."""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import threading
import time
from collections.abc import Callable

import torch

from dlrm_trainer import checkpoint, embedding_server, rounds, sync_server
from dlrm_trainer.rpc import Client, stalled_seconds
from dlrm_trainer.runtime import ConfigError, Heartbeat, ReplicaEnv, coordination, endpoint, stop_event_on_signals
from trainingjob_operator.api.spec import Role
from trainingjob_operator.coordination import Coordination

log = logging.getLogger("dlrm_trainer")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def start_heartbeat(renv: ReplicaEnv, coord: Coordination) -> Heartbeat:
    """Join the job without an endpoint and heartbeat from now on: the coordinator then knows this
    replica is alive while it loads its shard (minutes for a large one), and clients wait for its
    endpoint instead of calling its dead predecessor's."""
    coord.register(renv.role.value, renv.rank, "", renv.instance)
    heartbeat = Heartbeat(coord, renv)
    heartbeat.start()
    return heartbeat


def _serve_until_stopped(renv: ReplicaEnv, coord: Coordination, heartbeat: Heartbeat, port: int,
                         stop_server: Callable[[], None]) -> int:
    stop = stop_event_on_signals()
    coord.register(renv.role.value, renv.rank, endpoint(renv.host, port), renv.instance)
    log.info("%s serving on %s:%d", renv.name, renv.host, port)
    stop.wait()
    heartbeat.stop()
    stop_server()
    coord.r.hset(coord.key("peak_rss_mb"), renv.name, peak_rss_mb())
    return 0


def restore_shard(renv: ReplicaEnv, coord: Coordination, tables: embedding_server.ShardTables,
                  store: checkpoint.CheckpointStore) -> checkpoint.LoadReport:
    """Load this shard's latest intact checkpoint (CPR: only the failed shard reloads) and record what was
    restored beside the failure point, from which the coordinator counts the lost samples (PLS,
    ``core.accounting``): the same record on both backends."""
    spec = renv.spec
    full_recovery = coord.recovery_mode() == "full"
    if full_recovery and renv.generation > 0:
        # A full recovery restores its consistent cut, this shard's part of one round (nothing newer);
        # with no complete round every replica starts over from initial weights.
        only = restored_part(coord, renv.name)
        report = (checkpoint.load_latest(store, renv.rank, tables, coord, only=only) if only
                  else checkpoint.LoadReport(renv.rank, (), (), (), None, 0, 0.0))
    else:
        report = checkpoint.load_latest(store, renv.rank, tables, coord)
    trained = coord.total_samples(spec.replicas.trainer.replicas)
    # The failure this incarnation replaces: updates from samples between what was restored and that
    # point are gone (updates sent after it were retried against this replacement).
    mine = [f for f in coord.failures() if f.get("role") == renv.role.value and f.get("rank") == renv.rank]
    failed_at = int(mine[-1].get("samples", trained)) if mine and renv.generation > 0 else None
    coord.record_recovery(renv.name, renv.instance, loaded=list(report.loaded), description=report.describe(),
                          fallback=bool(report.skipped), duration_s=report.duration_s, samples_at_start=trained,
                          restored_progress=report.progress, base_progress=report.base_progress,
                          uncovered=round(report.uncovered, 6), failed_at=failed_at,
                          mode="full" if full_recovery else "partial")
    log.info("%s: %s (failed at %s samples)", renv.name, report.describe(), failed_at)
    return report


def _save_clock(renv: ReplicaEnv, restored: checkpoint.LoadReport) -> float | None:
    """When the shard was last saved, for the job's checkpoint schedule: the restored checkpoint's time; a
    job's first servers start the clock now (nothing to protect yet); a replacement that found no checkpoint
    has lost everything its shard learnt, so its first save is due at once (None)."""
    if restored.saved_unix is not None:
        return restored.saved_unix
    return time.time() if renv.generation == 0 else None


def restored_part(coord: Coordination, member: str) -> str | None:
    """The checkpoint id ``member`` restores in a full recovery (None: start from initial weights)."""
    restore = coord.restore_round()
    return str(restore["ids"][member]) if restore and member in restore.get("ids", {}) else None


def _in_full_mode(coord: Coordination) -> Callable[[], bool]:
    """Periodic saves stop while the effective mode is full: checkpoint rounds take their place."""
    return lambda: coord.recovery_mode() != "full"


def run_embedding_server(renv: ReplicaEnv) -> int:
    spec = renv.spec
    coord = coordination(renv)
    heartbeat = start_heartbeat(renv, coord)
    num_shards = spec.replicas.embedding_server.replicas
    tables = embedding_server.ShardTables.initialise(
        spec.model.rows(), spec.model.embedding_dim, num_shards, renv.rank, spec.data.seed)
    store = checkpoint.open_store(renv.checkpoint_location)
    restored = restore_shard(renv, coord, tables, store)
    shard = embedding_server.EmbeddingShard(tables, num_shards, renv.rank, spec.training.embedding_learning_rate)
    trainers = spec.replicas.trainer.replicas

    def on_error(error: Exception) -> None:
        log.error("%s: checkpoint failed, training continues: %s", renv.name, error)
        coord.set_checkpoint_error(renv.rank, str(error))

    writer = checkpoint.CheckpointWriter(store, renv.rank, _LoggingCoordination(coord, renv.rank))
    saver = checkpoint.BackgroundCheckpointer(
        shard, writer, spec.recovery.checkpoint, checkpoint.tuned_interval(spec.recovery.checkpoint, coord),
        progress=lambda: coord.total_samples(trainers), on_error=on_error, seed=spec.data.seed + renv.rank,
        periodic=_in_full_mode(coord), last_saved_unix=_save_clock(renv, restored),
    ).start()

    def save_round(round_id: int, cursor: int) -> None:
        # The snapshot now, while every trainer waits at the round's cursor; the write in the background.
        everything = checkpoint.select_rows("full", tables.access, 0.0, 0.0, torch.Generator())
        snap = checkpoint.snapshot(tables, everything, shard.lock)
        progress = cursor * spec.data.batch_size * trainers

        def write() -> None:
            info = saver.write_full(snap, progress)
            if info is not None:
                coord.round_saved(round_id, renv.name, info.id, cursor)

        threading.Thread(target=write, name=f"round-{round_id}", daemon=True).start()

    barrier = rounds.RoundBarrier(trainers, save_round)
    server = embedding_server.serve(shard, host="0.0.0.0", port=renv.port,
                                    extra={rounds.ROUND_METHOD: barrier.handler})

    def stop() -> None:
        saver.stop(final=False, timeout_s=10)
        server.stop()

    return _serve_until_stopped(renv, coord, heartbeat, server.port, stop)


class _LoggingCoordination:
    """The checkpoint writer's view of Redis, plus a log of every save (for plots and the summary)."""

    def __init__(self, coord: Coordination, shard: int) -> None:
        self.coord, self.shard = coord, shard

    def record_cost(self, name: str, seconds: float) -> None:
        self.coord.record_cost(name, seconds)

    def interval(self) -> float | None:
        return self.coord.interval()

    def holds(self) -> bool:
        return self.coord.holds()

    def set_checkpoint_pointer(self, shard: int, pointer: dict) -> None:  # type: ignore[type-arg]
        self.coord.set_checkpoint_pointer(shard, pointer)
        self.coord.set_checkpoint_error(shard, None)
        self.coord.log_checkpoint(**{**pointer, "shard": shard, "logged_at": time.time()})


def run_sync_server(renv: ReplicaEnv) -> int:
    spec = renv.spec
    coord = coordination(renv)
    heartbeat = start_heartbeat(renv, coord)
    service = sync_server.SyncService(spec.replicas.trainer.replicas, spec.training.sync.block_momentum,
                                      spec.training.sync.block_learning_rate)
    trainers = spec.replicas.trainer.replicas
    store = checkpoint.open_store(renv.checkpoint_location)
    if coord.recovery_mode() == "full" and renv.generation > 0:
        # Full recovery rolls the dense copy back to its round too; partial recovery re-seeds from a trainer.
        only = restored_part(coord, renv.name)
        dense = checkpoint.load_dense(store, only=only) if only else None
        if dense is not None and dense.flat is not None:
            service.state.center = dense.flat
        log.info("sync-server: dense checkpoint %s", (dense.id if dense else None) or "none (initial)")
    saver = sync_server.DenseCheckpointer(service, store, checkpoint.tuned_interval(
        spec.recovery.checkpoint, coord), lambda: coord.total_samples(trainers), periodic=_in_full_mode(coord),
        on_result=lambda error: coord.set_checkpoint_error(renv.name, None if error is None else str(error))).start()

    def save_round(round_id: int, cursor: int) -> None:
        with service.state.lock:
            center = None if service.state.center is None else service.state.center.clone()

        def write() -> None:
            if center is None:  # not seeded yet: the trainers' initial replica is the center
                return
            try:
                info = checkpoint.save_dense(store, center, cursor * spec.data.batch_size * trainers)
            except Exception as exc:
                log.error("round %d: dense checkpoint failed: %s", round_id, exc)
                return
            coord.round_saved(round_id, renv.name, info.id, cursor)

        threading.Thread(target=write, name=f"round-{round_id}", daemon=True).start()

    barrier = rounds.RoundBarrier(trainers, save_round)
    server = sync_server.serve(service, host="0.0.0.0", port=renv.port, extra={rounds.ROUND_METHOD: barrier.handler})

    def stop() -> None:
        saver.stop()
        server.stop()

    return _serve_until_stopped(renv, coord, heartbeat, server.port, stop)


EMULATED_SYNC_RTT_ENV = "TJ_EMULATED_SYNC_RTT_MS"


def _emulated_rtt_s() -> float:
    """For experiments: ``TJ_EMULATED_SYNC_RTT_MS`` (set through ``replicas.trainer.env``) adds that round trip
    to every trainer <-> sync-server call, to compare ShadowSync with foreground sync over a slower network."""
    raw = os.environ.get(EMULATED_SYNC_RTT_ENV, "")
    try:
        value = float(raw) / 1000.0 if raw else 0.0
    except ValueError:
        raise ConfigError(f"{EMULATED_SYNC_RTT_ENV} must be a number of milliseconds, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{EMULATED_SYNC_RTT_ENV} must not be negative, got {raw!r}")
    return value


def _resolver(coord: Coordination, role: Role, rank: int) -> Callable[[], str | None]:
    def resolve() -> str | None:
        member = coord.member(role.value, rank)
        return member.endpoint or None if member is not None else None

    return resolve


def wait_for_servers(coord: Coordination, renv: ReplicaEnv, timeout_s: float | None = None) -> None:
    """Until every server serves (registered an endpoint); a trainer shows whom it waits for."""
    spec = renv.spec
    timeout_s = spec.recovery.peer_wait_seconds if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    needed = {Role.EMBEDDING_SERVER: spec.replicas.embedding_server.replicas, Role.SYNC_SERVER: 1}
    shown: list[str] = []
    while True:
        missing = [f"{role.value}-{r}" for role, n in needed.items() for r in range(n)
                   if (m := coord.member(role.value, r)) is None or not m.endpoint]
        if missing != shown:
            shown = missing
            previous = coord.progress(renv.rank)
            if previous is not None and not previous.done:
                coord.report_progress(dataclasses.replace(previous, waiting_for=tuple(missing)))
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"servers not registered after {timeout_s:.0f}s: {', '.join(missing)}")
        time.sleep(0.2)


def run_trainer(renv: ReplicaEnv) -> int:
    import torch

    from dlrm_trainer.sources import data_source
    from dlrm_trainer.trainer import Trainer, choose_device, max_in_flight

    spec = renv.spec
    coord = coordination(renv)
    coord.register(renv.role.value, renv.rank, "", renv.instance)
    heartbeat = Heartbeat(coord, renv)
    heartbeat.start()
    wait_for_servers(coord, renv)
    wait_s = spec.recovery.peer_wait_seconds  # survivors wait for a lost server's replacement, not crash
    emb_clients = [Client(embedding_server.SERVICE, _resolver(coord, Role.EMBEDDING_SERVER, r), wait_s,
                          peer=f"{Role.EMBEDDING_SERVER.value}-{r}")
                   for r in range(spec.replicas.embedding_server.replicas)]
    sync_client = Client(sync_server.SERVICE, _resolver(coord, Role.SYNC_SERVER, 0), wait_s,
                         peer=f"{Role.SYNC_SERVER.value}-0", emulated_rtt_s=_emulated_rtt_s())
    device = choose_device(spec.training.device)
    try:
        source = data_source(spec)
    except FileNotFoundError as exc:  # no restart mounts a missing dataset: fail the job, say which field
        raise ConfigError(f"data.path: {exc}") from None
    trainer = Trainer(spec, renv.rank, coord, source, emb_clients, sync_client, device)
    previous = coord.progress(renv.rank)
    if previous is not None and previous.done and coord.result(renv.rank) is not None:
        # Its predecessor finished and reported, then died on the way out: nothing is left to do.
        log.info("trainer-%d: its predecessor already finished and reported its result", renv.rank)
        heartbeat.stop()
        for client in [*emb_clients, sync_client]:
            client.close()
        return 0
    # A replacement resumes its predecessor's cursor, even one that had read its whole shard and died while
    # evaluating: it then only evaluates (training the shard again from batch 0 counted its samples twice,
    # and a trainer killed in every evaluation never finished).
    resumed = previous is not None
    if resumed and previous is not None:
        # A replacement: resume this shard's cursor and start from the central dense copy.
        trainer.initialise_from_center()
        training = spec.training
        log.info("trainer-%d resuming at batch %d, its predecessor's last reported cursor: the batches it applied "
                 "after that report and the ones it had in flight (at most %d: prefetched or computing) are read "
                 "again", renv.rank, previous.cursor,
                 max_in_flight(training.hogwild_threads, training.prefetch_batches))
    stats = trainer.train(previous.cursor if resumed and previous else 0,
                          previous.samples if resumed and previous else 0)
    result = {"rank": renv.rank, "device": str(device), **stats,
              "stalled_on_embedding_servers_s": round(stalled_seconds(emb_clients), 3),
              "stalled_on_sync_server_s": round(sync_client.stalled_s, 3)}
    evaluation = trainer.evaluate(spec.data.eval_samples)
    result["eval_samples"] = evaluation.pop("samples")
    result.update(evaluation)
    if renv.rank == 0 and hasattr(trainer.source, "teacher_auc"):
        result["teacher_auc"] = float(trainer.source.teacher_auc(spec.data.eval_samples, 8192))
    result["peak_rss_mb"] = peak_rss_mb()
    if device.type == "cuda":
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    coord.set_result(renv.rank, result)
    log.info("trainer-%d done: %s", renv.rank, result)
    # The heartbeat keeps going until the process exits: a slow teardown on a loaded machine must not
    # look like a hung trainer. Channels are closed first so gRPC has nothing left to drain.
    for client in [*emb_clients, sync_client]:
        client.close()
    return 0
