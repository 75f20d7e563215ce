"""The collection log (``core.collection``): records round-trip, a torn tail is ignored then truncated,
damage before valid records is refused, and concurrent writers in two processes never share an id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from core.collection import (
    HEADER,
    LOG_FILE,
    MAX_ID,
    MAX_PAYLOAD_BYTES,
    Collection,
    CollectionCorrupt,
    PayloadError,
    PutRecord,
    parse_payload,
    stored_sizes,
)

REPO = Path(__file__).resolve().parents[2]
DIM = 8


def copies(seed: int, sizes: tuple[int, ...] = (32, 64)) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s: rng.integers(0, 256, (3, s, s), dtype=np.uint8) for s in sizes}


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def put(c: Collection, item_id: int | None, seed: int, base: int = 10, payload: dict | None = None) -> PutRecord:
    change = c.put(item_id, payload, copies(seed), "v1", unit(seed), base)
    assert isinstance(change.record, PutRecord)
    return change.record


def test_puts_and_deletes_replay_with_ids_payloads_pixels_and_vectors(tmp_path: Path) -> None:
    with Collection(tmp_path / "collection") as c:
        a = put(c, None, 1, payload={"album": "x", "n": [1, 2]})
        b = put(c, None, 2)
        assert (a.id, b.id) == (10, 11)  # after the bundle's ids 0..9
        assert c.put(3, None, copies(3), "v1", unit(3), 10).created is False  # a bundle item: replaced
        assert c.put(500, None, copies(4), "v1", unit(4), 10).created is True  # a new id of the client's choosing
        assert c.delete(b.id, 10).record is not None
        assert c.delete(b.id, 10).record is None  # not live any more: nothing written
        assert c.delete(7, 10).record is not None  # a bundle item
        assert put(c, None, 5).id == 501  # never an id used before (11 was deleted, 500 is the highest)
    again = Collection(tmp_path / "collection")
    again.catch_up()
    assert sorted(again.puts) == [3, 10, 500, 501]
    assert again.named == {3, 7, 10, 11, 500, 501}
    assert not again.exists(7, 10) and not again.exists(11, 10) and again.exists(3, 10) and again.exists(9, 10)
    r = again.puts[10]
    assert r.payload == {"album": "x", "n": [1, 2]} and r.version == "v1" and r.sizes == (32, 64)
    np.testing.assert_array_equal(r.embedding, unit(1))
    for s, pixels in copies(1).items():
        np.testing.assert_array_equal(again.pixels(r, s), pixels)
    assert again.pixels_at(r, 48).shape == (3, 48, 48)  # another model size: resized from the larger copy
    assert again.next_id(10) == 502 and again.next_id(1000) == 1000


def test_a_torn_tail_is_ignored_by_readers_and_truncated_by_the_next_writer(tmp_path: Path) -> None:
    folder = tmp_path / "collection"
    with Collection(folder) as c:
        for i in range(3):
            put(c, None, i)
        size = c.offset
    log = folder / LOG_FILE
    with open(log, "ab") as f:  # what kill -9 in the middle of a write leaves: a record cut short
        f.write(open(log, "rb").read()[: HEADER.size + 100])
    reader = Collection(folder)
    assert [r.id for r in reader.catch_up()] == [10, 11, 12] and reader.offset == size
    with Collection(folder) as writer:
        assert put(writer, None, 9).id == 13
    assert log.stat().st_size == writer.offset  # the torn bytes are gone, the new record follows the last good one
    assert [r.id for r in reader.catch_up()] == [13]  # the reader, waiting at the torn record, reads on

    with open(log, "ab") as f:  # after a power loss: a tail of zeros
        f.write(b"\0" * 5000)
    fresh = Collection(folder)
    assert [r.id for r in fresh.catch_up()] == [10, 11, 12, 13]


def test_a_damaged_record_followed_by_valid_ones_is_corruption_not_a_torn_tail(tmp_path: Path) -> None:
    folder = tmp_path / "collection"
    with Collection(folder) as c:
        offsets = [put(c, None, i).offset for i in range(3)]
    log = folder / LOG_FILE
    data = bytearray(log.read_bytes())
    data[offsets[1] + HEADER.size + 50] ^= 0xFF  # one flipped bit in the middle record's body: its CRC fails
    log.write_bytes(bytes(data))
    with pytest.raises(CollectionCorrupt, match=f"damaged at byte {offsets[1]}.*valid one follows at byte {offsets[2]}"):
        Collection(folder).catch_up()
    with Collection(folder) as writer, pytest.raises(CollectionCorrupt):
        put(writer, None, 7)  # a writer refuses too, and truncates nothing
    assert log.read_bytes() == bytes(data)

    data[offsets[1] + HEADER.size + 50] ^= 0xFF  # repaired; now the last record is damaged: a torn tail
    data[offsets[2] + HEADER.size + 50] ^= 0xFF
    log.write_bytes(bytes(data))
    assert [r.id for r in Collection(folder).catch_up()] == [10, 11]


def test_payloads_must_be_json_objects_within_the_size_limit() -> None:
    assert parse_payload('{"a": "é", "b": [1, null]}') == {"a": "é", "b": [1, None]}
    for bad, why in [("[1]", "must be a JSON object"), ("3", "must be a JSON object"), ("null", "got null"),
                     ("{oops", "not valid JSON"), ('{"x": NaN}', "not valid JSON")]:
        with pytest.raises(PayloadError, match=why):
            parse_payload(bad)
    parse_payload(json.dumps({"k": "x" * (MAX_PAYLOAD_BYTES - 8)}))  # exactly at the limit: {"k":"..."}
    with pytest.raises(PayloadError, match="over the limit"):
        parse_payload(json.dumps({"k": "x" * (MAX_PAYLOAD_BYTES - 7)}))
    assert stored_sizes(32) == (32, 64) and stored_sizes(64) == (64,) and stored_sizes(96) == (96,)


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from core.collection import Collection
    folder, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(seed)
    with Collection(folder) as c:
        ids = []
        for _ in range(n):
            pixels = {32: rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)}
            ids.append(c.put(None, {"writer": seed}, pixels, "v1", np.ones(8, dtype=np.float32), 10).record.id)
    print(" ".join(map(str, ids)))
""")


def test_two_processes_appending_at_once_get_unique_ids_and_a_clean_log(tmp_path: Path) -> None:
    folder, n = tmp_path / "collection", 60
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(n), str(seed)], stdout=subprocess.PIPE, env=env, text=True)
             for seed in (1, 2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    ids = [[int(i) for i in out.split()] for out in outs]
    assert all(len(x) == n for x in ids)
    assert sorted(ids[0] + ids[1]) == list(range(10, 10 + 2 * n))  # unique, and no id skipped
    replay = Collection(folder)
    records = replay.catch_up()
    assert replay.offset == (folder / LOG_FILE).stat().st_size and len(records) == 2 * n
    assert {r.id: r.payload["writer"] for r in records} == {i: w for w, x in zip((1, 2), ids) for i in x}


def test_an_id_taken_at_the_top_of_the_range_leaves_new_ids_to_the_gaps(tmp_path: Path) -> None:
    c = Collection(tmp_path / "collection")
    assert put(c, None, 1).id == 10  # after the bundle's 0..9
    assert put(c, MAX_ID, 2).id == MAX_ID  # a client's choice (found by a contract fuzzer)
    assert c.delete(10, 10).record is not None
    # Not MAX_ID + 1 (out of range, was a 503): the lowest id above the bundle no record ever named.
    assert [put(c, None, s).id for s in (3, 4)] == [11, 12]
    c.close()
    replayed = Collection(tmp_path / "collection")
    replayed.catch_up()
    assert replayed.next_id(10) == 13  # the same after a replay
    replayed.close()
