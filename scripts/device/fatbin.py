"""Prune CUDA fat binaries in a shared library down to one GPU architecture (transport only).

Why: onnxruntime-gpu's CUDA provider library carries cubins for sm_75, 80, 86, 89, 90 and 120 in its
`.nv_fatbin` section (about 200 MiB, already zstd-compressed). A lent H100/H200 (sm_90) loads only the
sm_90 images, and the device tool carries at most 64 MiB per call, so keeping only those images cuts the
payload from four or five calls to two. The result is what nvcc would have produced for that one
architecture: every fat binary keeps its address, its header's size field shrinks to the images kept,
and the bytes freed at its end are zeroed (the driver never reads past the size in the header).

Fat binary layout (CUDA's fatbinary container; stable since CUDA 4):
  container header, 16 bytes: u32 magic 0xBA55ED50, u16 version, u16 header size, u64 size of the images
  image header (header size given in it): u16 kind (1 PTX, 2 ELF cubin), u16 version, u32 header size,
      u64 payload size (padded), ..., u32 at offset 28: the SM architecture (90 for sm_90/sm_90a)
A container that holds no image for the kept architecture is left untouched (its kernels cannot run on
that GPU anyway), and PTX images are always kept (the driver can JIT them).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

FATBIN_MAGIC = 0xBA55ED50
SECTION = ".nv_fatbin"
KIND_PTX, KIND_ELF = 1, 2
_CONTAINER = struct.Struct("<IHHQ")
_IMAGE = struct.Struct("<HHIQ")
_ARCH_OFFSET = 28


class FatbinError(ValueError):
    """The library is not laid out as expected: nothing is changed."""


@dataclass(frozen=True)
class Image:
    kind: int
    arch: int
    start: int  # absolute offset of the image header in the buffer
    size: int  # header + payload bytes


@dataclass(frozen=True)
class Container:
    start: int
    header_size: int
    images: tuple[Image, ...]

    @property
    def end(self) -> int:
        return self.start + self.header_size + sum(i.size for i in self.images)


def elf_section(buf: bytes | bytearray, name: str) -> tuple[int, int]:
    """(file offset, size) of the named section of a little-endian ELF64 file."""
    if buf[:4] != b"\x7fELF" or buf[4] != 2 or buf[5] != 1:
        raise FatbinError("not a little-endian 64-bit ELF file")
    shoff, = struct.unpack_from("<Q", buf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", buf, 0x3A)
    if shoff == 0 or shnum == 0 or shentsize < 64:
        raise FatbinError("the ELF file has no section headers")

    def header(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        sh_name, = struct.unpack_from("<I", buf, base)
        sh_offset, sh_size = struct.unpack_from("<QQ", buf, base + 0x18)
        return sh_name, sh_offset, sh_size

    _, str_off, str_size = header(shstrndx)
    names = bytes(buf[str_off : str_off + str_size])
    for i in range(shnum):
        sh_name, offset, size = header(i)
        end = names.find(b"\0", sh_name)
        if names[sh_name:end].decode("ascii", "replace") == name:
            if offset + size > len(buf):
                raise FatbinError(f"section {name} runs past the end of the file")
            return offset, size
    raise FatbinError(f"the ELF file has no {name} section")


def parse_section(buf: bytes | bytearray, offset: int, size: int) -> list[Container]:
    """Every fat binary container in buf[offset:offset+size]; zero padding between them is skipped."""
    containers: list[Container] = []
    pos, end = offset, offset + size
    while pos < end:
        if end - pos < _CONTAINER.size:
            if any(buf[pos:end]):
                raise FatbinError(f"trailing bytes at {pos:#x} are not a container")
            break
        magic, _version, header_size, images_size = _CONTAINER.unpack_from(buf, pos)
        if magic != FATBIN_MAGIC:
            if not any(buf[pos : pos + 8]):
                pos += 8  # alignment padding
                continue
            raise FatbinError(f"no fat binary magic at {pos:#x} (found {magic:#x})")
        images, p = [], pos + header_size
        stop = p + images_size
        if stop > end:
            raise FatbinError(f"container at {pos:#x} runs past the section")
        while p < stop:
            kind, _v, image_header, payload = _IMAGE.unpack_from(buf, p)
            arch, = struct.unpack_from("<I", buf, p + _ARCH_OFFSET)
            if image_header < _ARCH_OFFSET + 4 or p + image_header + payload > stop:
                raise FatbinError(f"image at {p:#x} has an impossible size")
            images.append(Image(kind, arch, p, image_header + payload))
            p += image_header + payload
        containers.append(Container(pos, header_size, tuple(images)))
        pos = stop
    return containers


def prune(buf: bytearray, offset: int, size: int, keep_arch: int) -> dict[str, int]:
    """Drop, in place, every ELF image whose architecture is not keep_arch; returns counts and bytes."""
    containers = parse_section(buf, offset, size)
    stats = {"containers": len(containers), "pruned_containers": 0, "images_kept": 0,
             "images_dropped": 0, "bytes_dropped": 0, "containers_without_arch": 0}
    for c in containers:
        kept = [i for i in c.images if i.kind != KIND_ELF or i.arch == keep_arch]
        if not any(i.kind == KIND_ELF and i.arch == keep_arch for i in c.images):
            stats["containers_without_arch"] += 1
            continue
        stats["images_kept"] += len(kept)
        if len(kept) == len(c.images):
            continue
        body = b"".join(bytes(buf[i.start : i.start + i.size]) for i in kept)
        first = c.start + c.header_size
        struct.pack_into("<Q", buf, c.start + 8, len(body))
        buf[first : first + len(body)] = body
        buf[first + len(body) : c.end] = bytes(c.end - first - len(body))
        stats["pruned_containers"] += 1
        stats["images_dropped"] += len(c.images) - len(kept)
        stats["bytes_dropped"] += c.end - first - len(body)
    return stats


def prune_library(data: bytes, keep_arch: int) -> tuple[bytes, dict[str, int]]:
    """The library with its .nv_fatbin pruned to keep_arch, checked by re-parsing before it is returned."""
    offset, size = elf_section(data, SECTION)
    before = parse_section(data, offset, size)
    buf = bytearray(data)
    stats = prune(buf, offset, size, keep_arch)
    after = parse_section(buf, offset, size)
    if [c.start for c in after] != [c.start for c in before]:
        raise FatbinError("pruning moved a container: refusing the result")
    for old, new in zip(before, after):
        wanted = [data[i.start : i.start + i.size] for i in old.images if i.kind != KIND_ELF or i.arch == keep_arch]
        got = [bytes(buf[i.start : i.start + i.size]) for i in new.images]
        if any(i.kind == KIND_ELF and i.arch == keep_arch for i in old.images) and got != wanted:
            raise FatbinError(f"container at {old.start:#x}: kept images differ after pruning")
    if buf[:offset] != data[:offset] or buf[offset + size :] != data[offset + size :]:
        raise FatbinError("pruning touched bytes outside the fat binary section")
    return bytes(buf), stats


def arch_summary(data: bytes) -> dict[str, int]:
    """Bytes per (kind, arch) in the library's .nv_fatbin: 'elf_sm90': 76_000_000, ..."""
    offset, size = elf_section(data, SECTION)
    out: dict[str, int] = {}
    for c in parse_section(data, offset, size):
        for i in c.images:
            key = f"{'ptx' if i.kind == KIND_PTX else 'elf'}_sm{i.arch}"
            out[key] = out.get(key, 0) + i.size
    return out
