import pytest
from util import make_bucket

from adq_ray import storage


def _stage(uri):
    staging = storage.staging_dir(uri)
    storage.write_bytes(storage.join(staging, "part-0.bin"), b"abc")
    storage.write_bytes(storage.join(staging, "sub", "part-1.bin"), b"defg")
    return staging


@pytest.mark.parametrize("remote", [False, True])
def test_commit_publishes_all_or_nothing(tmp_path, remote, request):
    if remote:
        request.getfixturevalue("s3_server")
        uri = make_bucket("commit-bucket") + "/run/stage"
    else:
        uri = str(tmp_path / "run" / "stage")
    staging = _stage(uri)
    assert not storage.is_committed(uri)  # written but not published
    storage.commit(staging, uri, {"fingerprint": "x"})
    assert storage.is_committed(uri)
    assert not storage.exists(staging)
    assert storage.read_bytes(storage.join(uri, "sub", "part-1.bin")) == b"defg"
    assert storage.read_json(storage.join(uri, storage.SUCCESS)) == {"fingerprint": "x"}
    assert storage.total_bytes(uri) == 7  # bookkeeping files excluded
    # A second commit replaces the first wholesale.
    staging = storage.staging_dir(uri)
    storage.write_bytes(storage.join(staging, "only.bin"), b"z")
    storage.commit(staging, uri)
    assert not storage.exists(storage.join(uri, "part-0.bin"))
    assert storage.read_bytes(storage.join(uri, "only.bin")) == b"z"


def test_remove_file_and_dir(tmp_path):
    storage.write_bytes(str(tmp_path / "d" / "f"), b"1")
    storage.remove(str(tmp_path / "d" / "f"))
    assert not (tmp_path / "d" / "f").exists()
    storage.remove(str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()
    storage.remove(str(tmp_path / "absent"))  # no error
