import threading
import time

import pytest
import torch

from dlrm_trainer import sync_algorithms as algo


def test_easgd_seeds_then_moves_center_and_worker_symmetrically() -> None:
    state = algo.CentralState()
    first = torch.tensor([1.0, 2.0])
    assert torch.equal(algo.easgd_server(state, first, 0.5), torch.zeros(2))
    assert torch.equal(state.center, first)
    worker = torch.tensor([3.0, 2.0])
    d = algo.easgd_server(state, worker.clone(), 0.5)
    assert torch.allclose(d, torch.tensor([1.0, 0.0]))
    assert torch.allclose(state.center, torch.tensor([2.0, 2.0]))
    algo.easgd_trainer(worker, d)
    assert torch.allclose(worker, torch.tensor([2.0, 2.0]))  # both met in the middle


def test_easgd_converges_two_workers_to_consensus() -> None:
    state = algo.CentralState()
    a, b = torch.zeros(3), torch.full((3,), 10.0)
    for _ in range(50):
        for w in (a, b):
            algo.easgd_trainer(w, algo.easgd_server(state, w.clone(), 0.3))
    assert torch.allclose(a, b, atol=1e-3) and torch.allclose(a, state.center, atol=1e-3)


def rounds(close: object = algo.ma_close, wait_s: float = 2.0) -> algo.AveragingRounds:
    return algo.AveragingRounds(algo.CentralState(), staleness_s=10.0, wait_s=wait_s, close=close)  # type: ignore[arg-type]


def exchange_all(averager: algo.AveragingRounds, replicas: dict[int, torch.Tensor], now: float
                 ) -> dict[int, tuple[torch.Tensor, int]]:
    """Every rank exchanges at once, each in a thread of its own (as trainers' shadow threads do)."""
    out: dict[int, tuple[torch.Tensor, int]] = {}
    threads = [threading.Thread(target=lambda r=r, x=x: out.__setitem__(r, averager.exchange(r, x, now)))
               for r, x in replicas.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out


def test_ma_averages_the_replicas_of_one_round_and_everyone_gets_the_same_answer() -> None:
    averager = rounds()
    averager.exchange(0, torch.tensor([0.0]), now=0.0)  # seeds; rank 0 alone is live: closes at once
    averager.exchange(1, torch.tensor([4.0]), now=0.5)  # rank 1 joins: round 1 waits for rank 0, times out
    answers = exchange_all(averager, {0: torch.tensor([2.0]), 1: torch.tensor([6.0])}, now=1.0)
    (a, version_a), (b, version_b) = answers[0], answers[1]
    assert version_a == version_b and torch.equal(a, b) and torch.allclose(a, torch.tensor([4.0]))


def test_a_trainer_that_stopped_coming_holds_a_round_only_until_the_bounded_wait() -> None:
    averager = rounds(wait_s=0.2)
    exchange_all(averager, {0: torch.tensor([0.0]), 1: torch.tensor([2.0])}, now=0.0)
    started = time.monotonic()
    target, _ = averager.exchange(1, torch.tensor([8.0]), now=1.0)  # rank 0 died: wait, then go on alone
    assert 0.15 < time.monotonic() - started < 2.0 and torch.allclose(target, torch.tensor([8.0]))
    started = time.monotonic()
    averager.exchange(1, torch.tensor([8.0]), now=20.0)  # past the staleness window rank 0 is not waited for
    assert time.monotonic() - started < 0.15


def test_a_leaving_trainer_is_not_waited_for() -> None:
    averager = rounds(wait_s=0.3)
    exchange_all(averager, {0: torch.tensor([0.0]), 1: torch.tensor([2.0])}, now=0.0)
    done: list[tuple[torch.Tensor, int]] = []
    leaver = threading.Thread(target=lambda: done.append(averager.exchange(0, torch.tensor([1.0]), 0.5, leaving=True)))
    leaver.start()
    averager.exchange(1, torch.tensor([3.0]), now=0.5)
    leaver.join(5)
    started = time.monotonic()
    averager.exchange(1, torch.tensor([5.0]), now=0.6)
    assert time.monotonic() - started < 0.1  # a trainer that is merely late would hold it 0.3 s


def test_bmuf_closes_one_block_per_round_with_the_same_start_point_for_everyone() -> None:
    averager = rounds(close=algo.bmuf_close(block_momentum=0.5, block_lr=1.0, trainers=2))
    exchange_all(averager, {0: torch.tensor([0.0]), 1: torch.tensor([0.0])}, now=0.0)
    center, delta = averager.state.center.clone(), averager.state.block_delta.clone()  # type: ignore[union-attr]
    answers = exchange_all(averager, {0: torch.tensor([2.0]), 1: torch.tensor([4.0])}, now=1.0)
    # G = mean(2, 4) - x_g; Delta = 0.5 * Delta_prev + G; x_g += Delta; start = x_g + 0.5 * Delta
    expected_delta = 0.5 * delta + (torch.tensor([3.0]) - center)
    assert torch.allclose(averager.state.center, center + expected_delta)  # type: ignore[arg-type]
    start = center + expected_delta + 0.5 * expected_delta
    assert all(torch.allclose(target, start) for target, _ in answers.values())
    assert answers[0][1] == answers[1][1]


@pytest.mark.parametrize("trainers", [2, 4, 8])
@pytest.mark.parametrize("algorithm", ["ma", "bmuf"])
def test_averaging_keeps_the_progress_every_trainer_made(trainers: int, algorithm: str) -> None:
    """Issue #9's toy: every trainer adds the same update each step while its shadow thread exchanges in the
    background. Averaging replicas of one round keeps all of it (stale snapshots kept 0.80 / 0.73 / 0.70)."""
    close = algo.ma_close if algorithm == "ma" else algo.bmuf_close(None, 1.0, trainers)  # default momentum
    averager = rounds(close=close, wait_s=0.2)
    replicas = {r: torch.zeros(4) for r in range(trainers)}
    locks = {r: threading.Lock() for r in range(trainers)}
    steps, stop = 300, threading.Event()

    def work(rank: int) -> None:
        for _ in range(steps):
            with locks[rank]:
                replicas[rank].add_(1.0)
            time.sleep(0.001)

    def shadow(rank: int) -> None:
        while not stop.is_set():
            with locks[rank]:
                snapshot = replicas[rank].clone()
            target, _ = averager.exchange(rank, snapshot, time.monotonic())
            with locks[rank]:
                algo.replace_keeping_progress(replicas[rank], snapshot, target)
            time.sleep(0.003)

    workers = [threading.Thread(target=work, args=(r,)) for r in range(trainers)]
    shadows = [threading.Thread(target=shadow, args=(r,), daemon=True) for r in range(trainers)]
    for t in [*workers, *shadows]:
        t.start()
    for t in workers:
        t.join(60)
    stop.set()
    for t in shadows:
        t.join(10)
    kept = float(sum(x.mean() for x in replicas.values())) / (trainers * steps)
    assert kept >= 0.95, f"{algorithm} at {trainers} trainers kept {kept:.3f} of the progress"
    assert averager.state.exchanges >= trainers * 5  # it did exchange, in the background


def test_replace_keeping_progress_keeps_updates_made_during_the_exchange() -> None:
    live = torch.tensor([5.0, 5.0])
    snapshot = torch.tensor([4.0, 5.0])  # the worker moved +1 on the first coordinate meanwhile
    algo.replace_keeping_progress(live, snapshot, torch.tensor([0.0, 0.0]))
    assert torch.equal(live, torch.tensor([1.0, 0.0]))


def test_dense_learning_rate_warms_up_linearly() -> None:
    from dlrm_trainer.trainer import warmed_up

    assert warmed_up(0.01, 0, 100) == 0.0001
    assert warmed_up(0.01, 49, 100) == 0.005
    assert warmed_up(0.01, 500, 100) == 0.01
    assert warmed_up(0.01, 0, 0) == 0.01
