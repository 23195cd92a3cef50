"""The ``audit`` protocol's observation kind and its fields (docs/ids.md, "Observations"): one
access to patient data as a received audit message (PS3.15 A.5, RFC 3881, FHIR AuditEvent) tells it."""

from __future__ import annotations

from typing import Final

from pacsguard.ids.observation import Roles, register_kinds

PROTOCOL: Final = "audit"
#: Fields made only when a rule names them: they keep per-user state or query the store.
BASELINE_FIELDS: Final = frozenset({"hour_patients", "baseline_patients", "baseline_hours", "above_baseline"})
EXPLAIN_FIELDS: Final = frozenset({"explained", "explanation"})

register_kinds(
    PROTOCOL,
    {
        "access": (
            "one received audit message naming who did what to which patient's data",
            {
                "user": ("str", "the requesting user's identity in lower case (logins are compared without "
                         "case): UserID (FHIR who.identifier), else UserName"),
                "user_name": ("str", "the requesting user's display name (UserName, FHIR agent.name), empty "
                              "when none is given; for reading: rules key on user"),
                "user_host": ("str", "the requesting user's network access point"),
                "event": ("str", "the event, as the last part of its kind: patient-record, query, ..."),
                "event_id": ("str", "the PS3.15 event ID code, e.g. 110110"),
                "action": ("str", "EventActionCode: C, R, U, D or E"),
                "outcome": ("str", "EventOutcomeIndicator: 0, 4, 8 or 12"),
                "patient": ("str", "the first patient ID, without its assigning authority"),
                "patients": ("str-list", "every patient ID the message names, without authority"),
                "patient_count": ("int", "how many patients the message names"),
                "purposes": ("str-list", "purpose of use codes, e.g. TREAT, ETREAT"),
                "hour": ("int", "the hour of the access, 0-23, in the site's time zone (atna.time_zone)"),
                "weekday": ("int", "the day of the week of the access, 1 (Monday) to 7 (Sunday), in the site's "
                            "time zone"),
                "watched": ("bool", "a patient is on the administrator's watch list (VIPs, employees)"),
                "same_surname": ("bool", "a patient's surname is the user's own (staff directory)"),
                "same_address": ("bool", "a patient's address is the user's own (staff directory)"),
                "hour_patients": ("int", "distinct patients the user accessed in this clock hour (UTC), this "
                                  "access included"),
                "baseline_patients": ("float", "the user's baseline: median distinct patients over their past "
                                      "active hours (0 before any)"),
                "baseline_hours": ("int", "how many past active hours of the user the baseline knows"),
                "above_baseline": ("bool", "this access first took the user's hour above factor x baseline "
                                   "(atna.privacy.baseline); true once per user and hour"),
                "explained": ("bool", "the store shows a reason for this access (explanation templates, "
                              "docs/audit.md); absent for a message that is no access"),
                "explanation": ("str", "the template that explains the access, empty when none does"),
            },
        ),
    },
    Roles(patient="patient"),
)
