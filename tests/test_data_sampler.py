"""Resumable loading: a restarted loader yields exactly the batches an uninterrupted one would."""

import pytest
import torch
from torch.utils.data import Dataset

from duo.data import ResumableSampler, build_dataloader, get_corpus, pack_split
from duo.data.dataset import PackedDataset
from duo.data.tokenization import CharTokenizer


class Indices(Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor(i)


def _run(loader, epochs):
    out = []
    for _ in range(epochs):
        out.extend(b.tolist() for b in loader)
    return out


@pytest.mark.parametrize("world_size", [1, 2])
@pytest.mark.parametrize("stop_after", [0, 3, 13, 20, 26])  # 13 (ws=1) or 6 (ws=2) batches per epoch
def test_resume_yields_the_batches_an_uninterrupted_loader_would(world_size, stop_after):
    data, kw = Indices(53), dict(batch_size=4, seed=7, world_size=world_size)
    for rank in range(world_size):
        expected = _run(build_dataloader(data, rank=rank, **kw), epochs=5)
        first = build_dataloader(data, rank=rank, **kw)
        seen = []
        while len(seen) < stop_after:  # may cross epoch boundaries
            for batch in first:
                seen.append(batch.tolist())
                if len(seen) == stop_after:
                    break
        state = first.state_dict()
        resumed = build_dataloader(data, rank=rank, **kw)
        resumed.load_state_dict(state)
        rest = _run(resumed, epochs=5 - state["epoch"])
        assert seen + rest == expected


def test_ranks_split_each_epoch_disjointly_and_reshuffle():
    data = Indices(40)
    epochs = [[], []]
    for rank in range(2):
        loader = build_dataloader(data, batch_size=5, seed=1, rank=rank, world_size=2)
        for e in range(2):
            epochs[e].append([i for b in loader for i in b.tolist()])
    for r0, r1 in epochs:
        assert len(r0) == len(r1) == 20 and sorted(r0 + r1) == list(range(40))
    assert epochs[0][0] != epochs[1][0]  # a new permutation every epoch


def test_resume_on_a_different_world_size_continues_the_permutation():
    sampler = ResumableSampler(30, seed=3, world_size=2, rank=0)
    order = list(ResumableSampler(30, seed=3)._order(0).tolist())
    state = sampler.state_at(0, global_position=12)  # 6 samples per rank consumed
    single = ResumableSampler(30, seed=3)
    single.load_state_dict(state)
    assert list(single) == order[12:]
    with pytest.raises(ValueError, match="seed=3 but this sampler has 4"):
        ResumableSampler(30, seed=4).load_state_dict(state)


def test_resume_with_worker_prefetch(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n\n".join(f"document number {'x' * (i % 17)} {'y' * i}" for i in range(120)))
    entry = pack_split(
        get_corpus(str(path)),
        "train",
        CharTokenizer(),
        packing="pad",
        seq_len=24,
        cache_dir=tmp_path,
        show_progress=False,
    )
    data = PackedDataset(entry)
    item = data[0]
    assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (24,)
    assert item["attention_mask"].tolist() == [1] * int(entry.lengths[0]) + [0] * (24 - int(entry.lengths[0]))
    kw = dict(batch_size=8, seed=0, num_workers=2)
    expected = [b["input_ids"] for b in build_dataloader(data, **{**kw, "num_workers": 0})]
    loader = build_dataloader(data, **kw)
    it = iter(loader)
    seen = [next(it)["input_ids"] for _ in range(3)]  # workers have prefetched further than this
    state = loader.state_dict()
    assert state["position"] == 3 * 8
    resumed = build_dataloader(data, **kw)
    resumed.load_state_dict(state)
    rest = [b["input_ids"] for b in resumed]
    assert len(seen + rest) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(seen + rest, expected))


def test_state_after_fewer_batches_than_fetched():
    data, kw = Indices(40), dict(batch_size=4, seed=2)
    expected = _run(build_dataloader(data, **kw), epochs=1)
    loader = build_dataloader(data, **kw)
    it = iter(loader)
    seen = [next(it).tolist() for _ in range(3)]  # a trainer that fetched 3 but trained on 2
    resumed = build_dataloader(data, **kw)
    resumed.load_state_dict(loader.state_after(2))
    assert seen[:2] + _run(resumed, epochs=1) == expected
    resumed.sampler.set_epoch(1)  # Lightning calls this each epoch; a full pass already advanced it
    assert resumed.sampler.epoch == 1 and len(resumed) == 10


def test_tiny_validation_set_still_feeds_every_rank():
    shards = [list(ResumableSampler(1, shuffle=False, rank=r, world_size=4)) for r in range(4)]
    assert shards == [[0], [0], [0], [0]]


def test_sampler_rejects_bad_ranks():
    with pytest.raises(ValueError, match="rank=2 must be in"):
        ResumableSampler(10, rank=2, world_size=2)
