from __future__ import annotations

import pytest

from actors import MailboxSpec


class TestReservedLaneSpec:
    @pytest.mark.parametrize("reserved", [-1, 4, 5])
    def test_reserved_outside_zero_to_capacity_rejected_naming_the_rule(self, reserved: int) -> None:
        with pytest.raises(ValueError, match=r"MailboxSpec.reserved must be >= 0 and < capacity \(4\)"):
            MailboxSpec(capacity=4, reserved=reserved)

    def test_reserved_not_an_int_rejected(self) -> None:
        with pytest.raises(TypeError, match=r"MailboxSpec\.reserved must be an int"):
            MailboxSpec(capacity=4, reserved=1.5)  # type: ignore[arg-type]
