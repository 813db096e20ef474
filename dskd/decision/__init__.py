"""The deployed decision, in one place: the false-alarm rule (`false_alarm`), the record and one constructor per rule
(`record`), cross-fitting's cross-conformal decision (`crossfit`), the checks it meets (`checks`: the test split
decided, the shift test, the batch test) and where it is stored (`stored`). NumPy only: an exported model decides
without PyTorch."""

from .checks import at_threshold, excess_flags, shift_test
from .false_alarm import false_alarm_threshold, rank_of
from .record import FALSE_ALARM_RULES, RULES, Decision

__all__ = ["FALSE_ALARM_RULES", "RULES", "Decision", "at_threshold", "excess_flags", "false_alarm_threshold",
           "rank_of", "shift_test"]
