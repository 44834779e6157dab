"""The backshift 1.x format readers (backshift/legacy.py) on hand-built bytes."""

from __future__ import annotations

import bz2
import lzma
import os
import stat

import pytest
import zstandard

from backshift import legacy as lg

REG_RECORD = (
    b"group r_o_o_t_\n"
    b"hash 0873ac4ae7a9d4f744151859b7ef84d31d2d4bfc933be65b953057a3d78fed57-911900\n"
    b"hash 223a239aa7b446ca3a408945922049ac2ee14130fdd523f4a01d2831eaadc1eb-1243658\n"
    b"owner r_o_o_t_\n"
    b"regular_file True\n"
    b"st_ctime 1795724493.294487\n"
    b"st_dev 65024\n"
    b"st_gid 0\n"
    b"st_ino 2163680\n"
    b"st_mode 33188\n"
    b"st_mtime 1795724493.2944\n"
    b"st_size 2155558\n"
    b"st_uid 0"
)


def test_base255_known_bytes():
    assert lg.encode_base255(0) == b"\x01\x00"
    assert lg.encode_base255(2) == b"\x03\x00"
    assert lg.encode_base255(255) == b"\x02\x01\x00"  # seen in a real DB: a 255-byte value
    assert lg.decode_base255(b"\x02\x01\x00rest", 0) == (255, 3)


@pytest.mark.parametrize("n", [0, 1, 254, 255, 256, 65024, 255**3 + 7, 2**40])
def test_base255_round_trip_never_has_nul_digits(n):
    enc = lg.encode_base255(n)
    assert b"\0" not in enc[:-1]
    assert lg.decode_base255(enc, 0) == (n, len(enc))


def test_base255_unterminated_is_an_error():
    with pytest.raises(lg.LegacyFormatError):
        lg.decode_base255(b"\x05\x06", 0)


def test_dohdbm_parse_pairs_in_order():
    data = b"\x03\x00" + b"\x03\x00hl" + b"\x04\x00abc" + b"\x07\x00deeper" + b"\x01\x00"
    assert lg.parse_dohdbm(data) == [(b"hl", b"abc"), (b"deeper", b"")]
    pairs = [(b"x" * 300, b"y" * 70000), (b"\xff\xfe", b"v")]
    assert lg.parse_dohdbm(lg.encode_dohdbm(pairs)) == pairs


def test_dohdbm_empty_placeholder_has_no_entries():
    assert lg.parse_dohdbm(b"") == []


@pytest.mark.parametrize("data", [b"\x03\x00\x03\x00hl\x09\x00ab", b"\x02\x00\x02\x00a\x02\x00bX"])
def test_dohdbm_truncated_or_trailing_bytes_is_an_error(data):
    with pytest.raises(lg.LegacyFormatError):
        lg.parse_dohdbm(data)


@pytest.mark.parametrize("header,packer", [
    (b"8\n", lambda d: zstandard.ZstdCompressor().compress(d)),
    (b"1\n", lambda d: d),
    (b"7\n", lzma.compress),
    (b"5\n", bz2.compress),
])
def test_decode_body_every_header(header, packer):
    data = b"some bytes " * 100
    assert lg.decode_body(header + packer(data)) == data


@pytest.mark.parametrize("body", [b"9\nxx", b"8\n\x28\xb5\x2f\xfdgarbage", b""])
def test_decode_body_damage_is_an_error(body):
    with pytest.raises(lg.LegacyFormatError):
        lg.decode_body(body)


def test_unescape_examples_from_the_original():
    assert lg.unescape(b"r_o_o_t_") == b"root"
    assert lg.unescape(b"t_e_x_t_0_0_1_._t_x_t_") == b"text001.txt"
    assert lg.unescape(b"/_n_o_20w_h_e_r_e_") == b"/no where"
    raw = bytes(range(256))
    assert lg.unescape(lg.escape(raw)) == raw
    assert len(lg.escape(raw)) == 512


@pytest.mark.parametrize("bad", [b"r_o", b"zz", b"\x01_"])
def test_unescape_rejects_malformed(bad):
    with pytest.raises(lg.LegacyFormatError):
        lg.unescape(bad)


def test_parse_id_fields():
    lid = lg.parse_id("1795724500.41_vm_small_thu-nov-26-20-21-40-2026_97872085af5c07fb")
    assert (lid.started, lid.hostname, lid.subset) == ("1795724500.41", "vm", "small")


@pytest.mark.parametrize("bad", ["x_vm_small_t_0a", "1.0_vm_small_t", "1.0_vm__t_0a",
                                 "1.0_vm_s_t_zz", "1.0_a_b_c_d_e"])
def test_parse_id_rejects(bad):
    with pytest.raises(lg.LegacyFormatError):
        lg.parse_id(bad)


def test_parse_summary_finished_and_interrupted():
    done = lg.parse_summary(b"start_time 1795724500.406857\nnumber_of_files 315\n"
                            b"finish_time 1795724502.519611")
    assert done == lg.Summary(1795724500406857000, 315, 1795724502519611000)
    crashed = lg.parse_summary(b"start_time 1795724500.406857\nnumber_of_files 0\n"
                               b"finish_time None\n")
    assert crashed.finish_ns is None


def test_time_ns_is_exact_decimal():
    assert lg.time_ns("1795724493.294487") == 1795724493294487000
    assert lg.time_ns("1795726370.4189098") == 1795726370418909800
    assert 1795724493.294487 * 1e9 != 1795724493294487000  # why floats are not used


@pytest.mark.parametrize("ns", [1_600_000_000_123_456_789, 1_795_726_370_418_909_876, 0,
                                5, -1_500_000_000])
def test_legacy_time_ns_matches_what_the_original_stored(tmp_path, ns):
    p = tmp_path / "f"
    p.write_bytes(b"")
    os.utime(p, ns=(ns, ns))
    st = os.stat(p)
    assert st.st_mtime_ns == ns
    assert lg.legacy_time_ns(ns) == lg.time_ns(repr(st.st_mtime))


def test_parse_record_regular_file():
    rec = lg.parse_record(REG_RECORD)
    assert stat.S_ISREG(rec.mode) and rec.mode == 33188
    assert rec.user == rec.group == b"root"
    assert rec.mtime_ns == 1795724493294400000 and rec.ctime_ns == 1795724493294487000
    assert (rec.dev, rec.ino, rec.size) == (65024, 2163680, 2155558)
    assert [n for _s, n in rec.chunks] == [911900, 1243658]
    assert rec.chunks[0][0].hex().startswith("0873ac4a")


def test_parse_record_unknown_ids_become_no_name():
    rec = lg.parse_record(REG_RECORD.replace(b"owner r_o_o_t_", b"owner 1_2_3_4_5_")
                          .replace(b"st_uid 0", b"st_uid 12345"))
    assert rec.user == b"" and rec.uid == 12345


def test_parse_record_device_symlink_fifo():
    dev = lg.parse_record(b"character_device True\ncharacter_major 1\ncharacter_minor 3\n"
                          b"group r_o_o_t_\nowner r_o_o_t_\nst_ctime 1.5\nst_dev 9\nst_gid 0\n"
                          b"st_ino 4\nst_mode 8612\nst_mtime 1.25\nst_uid 0")
    assert dev.rdev == os.makedev(1, 3) and stat.S_ISCHR(dev.mode) and dev.size == 0
    blk = lg.parse_record(b"block_device True\nblock_major 8\nblock_minor 1\ngroup r_o_o_t_\n"
                          b"owner r_o_o_t_\nst_ctime 1\nst_gid 0\nst_mode 24992\nst_mtime 1\n"
                          b"st_uid 0")
    assert blk.rdev == os.makedev(8, 1)
    link = lg.parse_record(b"group r_o_o_t_\nlink_target /_n_o_20w_h_e_r_e_\nowner r_o_o_t_\n"
                           b"st_ctime 1\nst_gid 0\nst_mode 41471\nst_mtime 1\nst_uid 0\n"
                           b"symlink True")
    assert link.link_target == b"/no where" and link.dev == link.ino == 0
    fifo = lg.parse_record(b"fifo True\ngroup r_o_o_t_\nowner r_o_o_t_\nst_ctime 1\nst_dev 1\n"
                           b"st_gid 0\nst_ino 2\nst_mode 4516\nst_mtime 1\nst_uid 0")
    assert stat.S_ISFIFO(fifo.mode)


@pytest.mark.parametrize("damage", [
    lambda r: r.replace(b"regular_file True", b"directory True"),  # flag vs mode
    lambda r: r.replace(b"st_mode 33188\n", b""),
    lambda r: r.replace(b"-911900", b"-x"),
    lambda r: r.replace(b"st_mtime 1795724493.2944", b"st_mtime nan"),
])
def test_parse_record_rejects_damage(damage):
    with pytest.raises(lg.LegacyFormatError):
        lg.parse_record(damage(REG_RECORD))


def test_db_dir_to_path():
    assert lg.db_dir_to_path([]) == b"/"
    assert lg.db_dir_to_path([b"dir-a", b"dir-b c"]) == b"/a/b c"
    assert lg.db_dir_to_path([b"dir-a", b"x"]) is None
    assert lg.db_dir_to_path([b"dir-.."]) is None
    assert lg.join(b"/", b"tmp") == b"/tmp" and lg.join(b"/a", b"b") == b"/a/b"


@pytest.mark.parametrize("name,ok", [(b"a", True), (b"", False), (b".", False),
                                     (b"..", False), (b"a/b", False), (b"\xff", True)])
def test_valid_name(name, ok):
    assert lg.valid_name(name) is ok
