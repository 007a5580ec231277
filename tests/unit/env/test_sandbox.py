"""Each limit of the python environment's sandbox holds, tested by code that tries to pass it."""

import socket
import threading

import pytest

from rlvr.env import format_tool_call
from rlvr.env.python import Python
from rlvr.env.sandbox import run_sandboxed

pytestmark = pytest.mark.agents


def test_output_comes_back_and_the_standard_library_works():
    r = run_sandboxed("import json, fractions\nprint(json.dumps([fractions.Fraction(1, 3).denominator]))")
    assert (r.ended, r.returncode, r.stdout) == ("exit", 0, "[3]\n")


def test_time_limit_kills_a_busy_loop_and_a_sleeping_one():
    for code in ("while True: pass", "import time\ntime.sleep(60)"):
        r = run_sandboxed(code, timeout_s=1.0)
        assert r.ended == "timeout" and r.returncode == -9  # killed, not finished
        assert r.text().endswith("[killed: time limit]")


def test_memory_limit():
    r = run_sandboxed("x = bytearray(1 << 30)\nprint('allocated')", memory_mb=128)
    assert "allocated" not in r.stdout and r.returncode != 0 and "MemoryError" in r.stderr


def test_no_network_even_to_this_machine():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(3)
    port = server.getsockname()[1]
    accepted = []
    t = threading.Thread(target=lambda: accepted.append(_accept(server)))
    t.start()
    r = run_sandboxed(f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))\nprint('connected')")
    t.join()
    server.close()
    assert "connected" not in r.stdout and "PermissionError" in r.stderr and accepted == [None]
    r = run_sandboxed("import socket\nprint(socket.getaddrinfo('localhost', 80))")
    assert r.returncode != 0 and "socket.getaddrinfo is not allowed" in r.stderr


def _accept(server):
    try:
        return server.accept()
    except OSError:
        return None


def test_no_file_system_outside_its_own_folder(tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("do not read")
    for code in (f"print(open({str(outside)!r}).read())", f"open({str(tmp_path / 'new.txt')!r}, 'w').write('x')",
                 f"import os\nos.remove({str(outside)!r})", f"import shutil\nshutil.rmtree({str(tmp_path)!r})"):
        r = run_sandboxed(code)
        assert r.returncode != 0 and "PermissionError: sandbox" in r.stderr, (code, r.stderr[-300:])
    assert outside.read_text() == "do not read" and not (tmp_path / "new.txt").exists()
    r = run_sandboxed("open('scratch.txt', 'w').write('ok')\nprint(open('scratch.txt').read())")
    assert r.stdout == "ok\n"  # its own folder is writable (and removed afterwards)


def test_no_processes_and_no_native_code():
    for code, event in (("import subprocess\nsubprocess.run(['true'])", "subprocess.Popen"),
                        ("import os\nos.system('true')", "os.system"), ("import os\nos.fork()", "os.fork"),
                        ("import ctypes\nctypes.CDLL(None)", "ctypes.dlopen")):
        r = run_sandboxed(code)
        assert r.returncode != 0 and f"{event} is not allowed" in r.stderr, (code, r.stderr[-300:])


def test_the_python_environment_answers_with_the_output():
    env = Python(timeout_s=1.0, max_output_chars=40)
    reply = env.respond(None, format_tool_call("python", {"code": "print(sum(range(101)))"}))
    assert reply.messages == [{"role": "tool", "content": "5050"}] and reply.tool_calls == {"python": 1}
    loop = env.respond(None, format_tool_call("python", {"code": "while True: pass"}))
    assert not loop.done and loop.messages[0]["content"] == "[killed: time limit]"
    long = env.respond(None, format_tool_call("python", {"code": "print('x' * 100)"}))
    assert long.messages[0]["content"].startswith("x" * 40 + "\n[... 61 more characters]")
