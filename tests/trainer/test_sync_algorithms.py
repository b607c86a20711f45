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


def test_ma_averages_live_snapshots_and_drops_stale_ones() -> None:
    state = algo.CentralState()
    algo.ma_server(state, 0, torch.tensor([0.0]), now=0.0, staleness_s=10)
    mean = algo.ma_server(state, 1, torch.tensor([4.0]), now=1.0, staleness_s=10)
    assert torch.allclose(mean, torch.tensor([2.0]))
    # Rank 0 died; after the staleness window only rank 1 counts.
    mean = algo.ma_server(state, 1, torch.tensor([6.0]), now=20.0, staleness_s=10)
    assert torch.allclose(mean, torch.tensor([6.0]))


def test_bmuf_block_closes_when_every_live_trainer_contributed() -> None:
    state = algo.CentralState()
    start, v0 = algo.bmuf_server(state, 0, torch.tensor([0.0]), 0.0, 10, trainers=2, block_momentum=0.5,
                                 block_lr=1.0)
    assert v0 == 1 and torch.allclose(start, torch.tensor([0.0]))  # seeded; only rank 0 live: block closes
    _, v1 = algo.bmuf_server(state, 0, torch.tensor([2.0]), 1.0, 10, 2, 0.5, 1.0)
    assert v1 == 2  # still only rank 0 live
    _, v2 = algo.bmuf_server(state, 1, torch.tensor([4.0]), 1.5, 10, 2, 0.5, 1.0)
    assert v2 == 2  # rank 1 joined: the open block now needs rank 0 again
    x_g_before = state.center.clone()
    start, v3 = algo.bmuf_server(state, 0, torch.tensor([2.0]), 2.0, 10, 2, 0.5, 1.0)
    assert v3 == 3
    # G = mean(2, 4) - x_g; Delta = 0.5 * Delta_prev + G; start = x_g + 0.5 * Delta
    assert torch.allclose(start, state.center + 0.5 * state.block_delta)
    assert not torch.equal(state.center, x_g_before)


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
