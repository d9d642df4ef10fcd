"""One entry of an experiment's search space (``tune.search.<experiment>``): the range or choices Optuna samples a dotted
key from (``suggest_float`` / ``suggest_int`` / ``suggest_categorical``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pipeline.params.schema import ParamError, bounded


@dataclass
class ParamSpace:
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = bounded(None, gt=0)
    choices: list[Any] | None = None

    def validate(self, where: str) -> None:
        """The rules between the keys of one entry; errors name ``where``."""
        if self.type == "categorical":
            if not self.choices:
                raise ParamError(f"{where}.choices must be a non-empty list for type: categorical")
            if any(v is not None for v in (self.low, self.high, self.step)) or self.log:
                raise ParamError(f"{where}: low/high/log/step are not allowed with type: categorical")
            for i, choice in enumerate(self.choices):
                if not is_categorical_value(choice):
                    raise ParamError(f"{where}.choices[{i}] = {choice!r} must be a number, string, bool or null")
            return
        if self.choices is not None:
            raise ParamError(f"{where}.choices is only allowed with type: categorical")
        if self.low is None or self.high is None:
            raise ParamError(f"{where} needs low and high for type: {self.type}")
        if not self.low < self.high:
            raise ParamError(f"{where}: low = {self.low:g} must be < high = {self.high:g}")
        if self.log and self.low <= 0:
            raise ParamError(f"{where}: log: true needs low > 0, got {self.low:g}")
        if self.log and self.step is not None:
            raise ParamError(f"{where}: log and step cannot be combined")
        if self.type == "int" and not all(float(v).is_integer() for v in (self.low, self.high, self.step or 1)):
            raise ParamError(f"{where}: low, high and step must be integers for type: int")

    def ends(self) -> list[Any]:
        """The values that bound the entry: every choice, or both ends of the range."""
        if self.type == "categorical":
            return list(self.choices or [])
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


    def contains(self, value: Any) -> bool:
        """Whether ``value`` is a point of the entry: one of its choices (a bool only as a bool),
        or a number within its range."""
        if self.type == "categorical":
            return any(isinstance(c, bool) == isinstance(value, bool) and c == value for c in self.choices or [])
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return self.low <= value <= self.high


def is_categorical_value(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))
