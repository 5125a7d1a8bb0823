from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fx() -> Path:
    """Folder of the hand-written annotation files in the datasets' real formats."""
    return FIXTURES
