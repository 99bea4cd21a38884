"""The engine's import rules: core never pulls in web or queue code, does no work at import time, and
the spec (which the API will import) never pulls in torch."""

import subprocess
import sys

SERVICE_PACKAGES = ("fastapi", "celery", "redis", "sqlalchemy", "store", "api", "worker")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_spec_imports_without_torch():
    result = _run("import sys, core.spec; assert 'torch' not in sys.modules, 'torch imported'")
    assert result.returncode == 0, result.stderr


def test_engine_imports_no_service_code_and_touches_no_cuda(tmp_path):
    code = (
        "import sys, os, torch\n"
        "import core.trainer, core.monitor, core.report, core.probes, core.co, core.data, core.autoattack\n"
        f"bad = [m for m in {SERVICE_PACKAGES!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
        "assert not torch.cuda.is_initialized()\n"
        "assert 'matplotlib' not in sys.modules and 'torchvision' not in sys.modules\n"
        "assert 'pyautoattack' not in sys.modules  # imported when an evaluation asks for it\n"
        "assert os.listdir('.') == []\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path, env={"PYTHONPATH": str(__import__("pathlib").Path(__file__).parents[2])})
    assert result.returncode == 0, result.stderr
