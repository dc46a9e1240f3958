"""In a fresh interpreter: the answer evaluation imports ragas, litellm and instructor only when it runs
metrics that need them."""

import subprocess
import sys


def test_importing_the_module_does_not_import_ragas():
    code = (
        "import sys; from rag_core.answer_eval import evaluate_answers; result = evaluate_answers([]); "
        "assert not {'ragas', 'litellm', 'instructor'} & set(sys.modules), 'imported at module level'; "
        "print(sorted(set(result.skipped.values())), result.means, result.metrics)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "['no samples'] {} []"
