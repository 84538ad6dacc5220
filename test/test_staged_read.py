"""staged_read.read_into: a file's byte range into a tensor, read in chunks by several threads (on a GPU through a
ring of pinned buffers whose copies overlap the next reads): the file's exact bytes wherever the chunks fall, a file
that ends too soon reported, and the ring reusable after an error."""
import os

import numpy as np
import pytest
import torch

from var_gen_ros.infinity import staged_read


@pytest.fixture
def data_file(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 100_003, dtype=np.uint8).tobytes()
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    yield fd, data
    os.close(fd)


def _small_chunks(monkeypatch, chunk=4096, buffers=3, readers=2):
    monkeypatch.setattr(staged_read, "CHUNK", chunk)
    monkeypatch.setattr(staged_read, "BUFFERS", buffers)
    monkeypatch.setattr(staged_read, "READERS", readers)


def _check(fd, data, device):
    # whole chunks, a partial last one, one chunk, less than one, an odd offset
    for offset, n in ((0, len(data)), (7, 4096 * 5), (12_345, 4096), (99_000, 1_003), (1, 1)):
        dst = torch.full((n,), 0xAB, dtype=torch.uint8, device=device)
        staged_read.read_into(fd, offset, dst)
        assert dst.cpu().numpy().tobytes() == data[offset:offset + n], (offset, n)
    # past the end: EOFError, and the ring works again after it
    with pytest.raises(EOFError, match="ends at byte 100003"):
        staged_read.read_into(fd, 90_000, torch.empty(20_000, dtype=torch.uint8, device=device))
    dst = torch.empty(len(data), dtype=torch.uint8, device=device)
    staged_read.read_into(fd, 0, dst)
    assert dst.cpu().numpy().tobytes() == data


def test_read_into_cpu_gives_the_files_bytes(data_file, monkeypatch):
    _small_chunks(monkeypatch)
    _check(*data_file, "cpu")
    with pytest.raises(ValueError):
        staged_read.read_into(data_file[0], 0, torch.empty(4, 4, dtype=torch.uint8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")
def test_read_into_gpu_through_the_pinned_ring_gives_the_files_bytes(data_file, monkeypatch):
    """25 chunks through 3 pinned buffers: each buffer is refilled while the copies of the others are queued."""
    _small_chunks(monkeypatch)
    _check(*data_file, "cuda")
    staged_read.release()
