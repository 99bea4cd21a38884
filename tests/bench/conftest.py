from tests.core.conftest import single_thread  # noqa: F401  (one intra-op thread for tiny tensors)
