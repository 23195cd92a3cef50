"""The Event: one typed record for everything pacsguard records (see docs/events.md)."""

from pacsguard.events.bus import EventBus
from pacsguard.events.model import NOBODY, Event, Outcome, Party, Severity, parse_time
from pacsguard.events.sink import EventSink, FanOut
from pacsguard.events.subscription import Subscription

__all__ = ["Event", "EventBus", "EventSink", "FanOut", "NOBODY", "Outcome", "Party", "Severity", "Subscription",
           "parse_time"]
