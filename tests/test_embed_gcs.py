"""`bindset embed` into ``gs://`` against a GCS emulator (gcp-storage-emulator, 127.0.0.1; tests/gcsserver.py),
mirroring tests/test_embed_s3.py: DATA and RUN on the bucket, EMB written with the same part files, vectors and
index sizes as a local EMB (meta.json last), a rerun that embeds nothing, search over the URL giving the local
hits, and a second run refused by the lease object while the first holds it."""

from __future__ import annotations

import os

from bindset.cli import main
from pipelines import storage
from tests.test_embed import BATCH, _vectors, clean, root  # noqa: F401 - module fixtures, reused
from tests.test_embed_s3 import _put_run, assert_same_embeddings
from tests.test_train_s3 import _upload
from training import emb_store as S
from training.embed import embed
from training.search import search


def test_embed_into_gcs_gives_the_local_parts_and_a_second_run_is_refused(root, clean, gcs_bucket, tmp_path,  # noqa: F811
                                                                          monkeypatch, capsys):  # fmt: skip
    monkeypatch.setenv("BINDSET_CACHE_DIR", str(tmp_path / "cache"))
    data = str(_upload(root / "data", f"{gcs_bucket.url}/data"))
    run = _put_run(root / "run", f"{gcs_bucket.url}/run")
    url = f"{gcs_bucket.url}/emb"
    cmd = ["embed", data, run, url, "--batch-size", str(BATCH), "--quiet"]

    # a second run while one holds EMB's lease: exit 2 naming the holder, nothing committed
    with S.EmbLease(storage.location(url)):
        assert main(cmd) == 2
    err = capsys.readouterr().err
    assert "another `bindset embed`" in err and f"pid {os.getpid()}" in err, err
    assert not storage.exists(f"{url}/{S.META}") and not storage.exists(f"{url}/{S.LOCK}")

    assert main(cmd) == 0
    meta, want = S.read_meta(url), S.read_meta(clean)
    assert meta["counts"] == want["counts"] and meta["parts"] == want["parts"] and meta["run"] == run
    assert_same_embeddings(url, clean, meta)  # the same bytes: vectors, rows, order; the lease released

    again = embed(data, run, url, batch_size=BATCH)
    assert (again.stats.parts_embedded, again.stats.samples_embedded, again.stats.index_built) == (0, 0, [])
    assert again.stats.parts_kept == len(want["parts"])
    keys, _ = _vectors(clean)["audio"]
    hits = search(url, "key", keys[0], to="audio", k=3, source="audio")
    assert hits == search(clean, "key", keys[0], to="audio", k=3, source="audio") and hits
