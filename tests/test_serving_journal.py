"""The router's write-ahead metrics journal (serving/journal.py, issue 14): what a reply's events
become on disk, how a dead replica's journal is found and replayed once, and how the stats actor
applies a resent batch once. The live kill-the-router check is in test_serving_faults.py."""

import json
import subprocess
import sys
import textwrap

import pytest

from tierserve.serving.journal import Journal, journal_dir, orphans
from tierserve.serving.metrics import Events, Stats


def _ev(tier="pruned", n=1, usd=0.5) -> Events:
    ev = Events()
    for _ in range(n):
        ev.request(tier, "routine", 0.01)
    ev.count_tokens(tier, {"input_tokens": 7})
    ev.spend({tier: usd}, 2 * usd)
    ev.tier_up = {"full": True, "pruned": tier == "pruned"}
    ev.cost_ratio = (0.3, "live")
    return ev


def test_events_survive_json_and_merge_adds_counts_keeps_latest_states():
    a, b = _ev("pruned", 2, 0.5), _ev("full", 1, 1.0)
    back = Events.from_json(json.loads(json.dumps(a.to_json())))
    assert back == a
    b.cost_ratio = (0.4, "measured")
    merged = Events.from_json(a.to_json()).merge(b)
    assert merged.requests == {("pruned", "routine"): 2, ("full", "routine"): 1}
    assert merged.tokens == {("pruned", "input"): 7, ("full", "input"): 7}
    assert merged.cost == {"pruned": 0.5, "full": 1.0} and merged.counterfactual == 3.0
    assert len(merged.durations) == 3
    assert merged.tier_up == {"full": True, "pruned": False}  # the later state
    assert merged.cost_ratio == (0.4, "measured")
    assert Events().empty() and not _ev().empty()


def test_a_resent_batch_is_applied_once():
    stats = Stats("m", gate=0.99, window=50, hysteresis=0.01)
    stats.push(_ev(n=3), "r1", 5)
    stats.push(_ev(n=3), "r1", 5)  # the push timed out after the actor applied it: resent
    stats.push(_ev(n=1), "r1", 4)  # older
    assert stats.totals()["served"]["pruned"] == 3 and stats.applied_upto("r1") == 5
    stats.push(_ev(n=2), "r1", 6)
    stats.push(_ev(n=1), "r2", 1)  # another replica counts on its own
    stats.push(_ev(n=1))  # untagged (no journal): always applied
    assert stats.totals()["served"]["pruned"] == 7
    stats.forget("r1")
    assert stats.applied_upto("r1") == 0


def test_acked_segments_are_dropped_and_the_live_one_emptied(tmp_path, monkeypatch):
    import tierserve.serving.journal as journal

    monkeypatch.setattr(journal, "SEGMENT_BYTES", 2000)
    j = Journal(tmp_path)
    for seq in range(1, 41):
        j.append(seq, _ev())
    segs = sorted(tmp_path.glob("*.jsonl"))
    assert len(segs) > 2 and len(j.segments) == len(segs)
    j.acked(20)
    left = sorted(tmp_path.glob("*.jsonl"))
    assert 0 < len(left) < len(segs)
    seqs = [json.loads(line)["seq"] for p in left for line in p.read_text().splitlines()]
    assert set(range(21, 41)) <= set(seqs) and min(seqs) <= 21  # nothing unacked dropped
    j.acked(40)
    assert [p.stat().st_size for p in tmp_path.glob("*.jsonl")] == [0]
    j.append(41, _ev())
    assert len((tmp_path / j.segments[-1][0].name).read_text().splitlines()) == 1
    j.close()
    assert not list(tmp_path.iterdir())


def _dead_writer(directory, seqs, torn: bool) -> str:
    """A router process that journals `seqs` and is killed (SIGKILL) without cleaning up."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from tierserve.serving.journal import Journal
        from tierserve.serving.metrics import Events
        j = Journal(Path({str(directory)!r}))
        for seq in {list(seqs)!r}:
            ev = Events(); ev.request("pruned", "routine", 0.01); ev.spend({{"pruned": 1.0}}, 2.0)
            j.append(seq, ev)
        if {torn!r}:
            os.write(j.segments[-1][1], b'{{"seq": 99, "ev": {{"requ')
        print(j.source, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == -9, out.stderr
    return out.stdout.strip()


def test_a_dead_replica_s_journal_is_found_and_replayed_once(tmp_path):
    live = Journal(tmp_path)  # a live replica: its journal is never an orphan
    live.append(1, _ev())
    source = _dead_writer(tmp_path, range(1, 6), torn=True)
    found = orphans(tmp_path, own=live.source)
    assert [o.source for o in found] == [source]
    assert orphans(tmp_path, own=live.source) == []  # we hold its lock now

    stats = Stats("m", gate=0.99, window=50, hysteresis=0.01)
    stats.push(_ev(n=2, usd=1.0), source, 2)  # the actor got seq 1..2 before the kill
    ev, last = found[0].entries(stats.applied_upto(source))
    assert last == 5 and ev.requests == {("pruned", "routine"): 3}  # 3..5; the torn line skipped
    stats.push(ev, source, last)
    stats.push(ev, source, last)  # a second replay (another replica) changes nothing
    assert stats.totals()["served"]["pruned"] == 5 and stats.totals()["cost_usd"] == 4.0  # 1 + 3 x 1
    found[0].done()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in tmp_path.iterdir() if p.name.startswith(live.source))
    live.close()


def test_journals_are_kept_per_node_and_model(tmp_path, monkeypatch):
    monkeypatch.setenv("TIERSERVE_JOURNAL_DIR", str(tmp_path))
    a, b = journal_dir("m/1", "node-a"), journal_dir("m/1", "node-b")
    assert a.parent.parent == tmp_path and a != b and "/" not in a.name
    assert journal_dir("m", "n", root=tmp_path / "x").parent.parent == tmp_path / "x"



class _InProcessStats:
    """The real `Stats` body behind the one handle method the pusher calls
    (`push.remote(...)` -> awaitable). A stand-in for the Ray actor boundary only: the same
    path through the real detached actor is covered by test_serving_app.py's `/metrics` reads."""

    def __init__(self) -> None:
        self.body, self.calls = Stats("m", gate=0.99, window=50, hysteresis=0.01), 0
        self.push = self

    def remote(self, ev, source, upto):
        self.calls += 1

        async def apply():
            return self.body.push(ev, source, upto)
        return apply()


def test_replies_close_together_share_one_push_after_they_left_and_drain_ships_at_once():
    import asyncio
    import time

    from tierserve.serving.guard import PUSH_COALESCE_S, Guard

    class Router(Guard):  # the parts of Router the pusher uses; no journal in this test
        def __init__(self, stats) -> None:
            self.commit_metrics, self.stats, self.background = False, stats, set()
            self.events, self.shared = Events(), {}
            self._open_journal("m")

        def _share(self, state: dict) -> None:
            self.shared = state

    async def scenario():
        stats = _InProcessStats()
        r = Router(stats)
        for _ in range(5):  # five replies in a row
            r.events.request("pruned", "routine", 0.01)
            r._commit()
            await asyncio.sleep(0)  # the reply leaves: no actor call beside it
        assert stats.calls == 0
        await asyncio.sleep(3 * PUSH_COALESCE_S)
        assert stats.calls == 1 and stats.body.totals()["served"]["pruned"] == 5
        assert "shadow_fallback_active" in r.shared  # the push's reply carries the shared state
        r.events.request("full", "routine", 0.01)
        r._commit()
        t0 = time.perf_counter()
        await r._drain()  # /metrics: this replica's replies are applied before it renders
        assert time.perf_counter() - t0 < PUSH_COALESCE_S
        assert stats.calls == 2 and stats.body.totals()["served"] == {"pruned": 5, "full": 1}
        await r._drain()  # nothing pending: no call
        assert stats.calls == 2

    asyncio.run(scenario())


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
