"""Unit tests of the loan activities: every decision rule and boundary, texts and persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from core.rules import load_messages, load_rules
from core.store.files import JsonStore
from loans.activities import LoanActivities
from loans.model import (
    AGENT_NOTIFICATIONS,
    APPLICATIONS,
    INVALID_APPLICATION,
    AgentNotificationRequest,
    ContactPreferenceRequest,
    DecisionMessage,
    LoanApplication,
    LoanOutcome,
    PersistRequest,
    record_key,
)

HERE = Path(__file__).resolve().parents[2]  # the repository root


def make_activities(tmp_path: Path, rules_file: Path = HERE / "rules.json") -> LoanActivities:
    return LoanActivities(
        store=JsonStore(tmp_path),
        rules=load_rules(rules_file),
        messages=load_messages(HERE / "messages.json"),
        identity="worker-test",
    )


def applicant(credit_score=750, loan_amount=40_000.0, annual_income=100_000.0, has_bankruptcy=False, **extra):
    return LoanApplication(
        name=extra.get("name", "Ada Lovelace"),
        email=extra.get("email", "ada@example.com"),
        loan_amount=loan_amount,
        credit_score=credit_score,
        annual_income=annual_income,
        has_bankruptcy=has_bankruptcy,
    )


@pytest.fixture
def activities(tmp_path: Path) -> LoanActivities:
    return make_activities(tmp_path)


def decision_for(activities: LoanActivities, application: LoanApplication) -> str:
    return activities.decide(application).decision


@pytest.mark.parametrize(
    ("credit_score", "loan_amount", "annual_income", "has_bankruptcy", "expected"),
    [
        # Compliance: credit score 600, loan 500,000.
        (599, 10_000, 100_000, False, "denied_compliance"),
        (600, 10_000, 100_000, False, "denied"),
        (750, 500_000, 2_000_000, False, "pre_approved"),
        (750, 500_001, 2_000_000, False, "denied_compliance"),
        # Bankruptcy needs 680.
        (679, 10_000, 100_000, True, "denied"),
        (680, 10_000, 100_000, True, "conditional"),
        # Near prime 680-719: loan-to-income at most 0.50.
        (679, 10_000, 100_000, False, "denied"),
        (680, 50_000, 100_000, False, "conditional"),
        (680, 51_000, 100_000, False, "denied"),
        (719, 50_000, 100_000, False, "conditional"),
        # Prime from 720: loan-to-income at most 0.40 is pre-approved.
        (720, 40_000, 100_000, False, "pre_approved"),
        (719, 40_000, 100_000, False, "conditional"),
        (720, 41_000, 100_000, False, "conditional"),
        (720, 40_000, 100_000, True, "conditional"),
        (850, 41_000, 100_000, False, "conditional"),
        # No income: infinite loan-to-income.
        (750, 10_000, 0, False, "conditional"),
        (700, 10_000, 0, False, "denied"),
    ],
)
def test_decision_rules_and_boundaries(activities, credit_score, loan_amount, annual_income, has_bankruptcy, expected):
    application = applicant(credit_score, float(loan_amount), float(annual_income), has_bankruptcy)
    assert decision_for(activities, application) == expected


def test_loan_to_income_is_reported_and_none_for_no_income(activities):
    assert activities.decide(applicant(750, 50_000.0, 150_000.0)).loan_to_income_ratio == pytest.approx(0.3333)
    assert activities.decide(applicant(750, 10_000.0, 0.0)).loan_to_income_ratio is None


def test_messages_fill_in_amount_and_email(activities):
    decision = activities.decide(applicant(750, 50_000.0, 150_000.0, email="john@example.com"))
    assert decision.message.title == "You're pre-approved!"
    assert "$50,000" in decision.message.message
    assert "We are emailing the details to john@example.com." in decision.message.message
    assert decision.decided_by == "worker-test"


# (credit score, loan, income, bankruptcy) -> decision and reason code; income 100,000 and the
# scores are what the explanation must never quote.
REASON_CASES = [
    (550, 10_000, False, "denied_compliance", "credit_below_minimum"),
    (750, 500_001, False, "denied_compliance", "loan_above_maximum"),
    (650, 10_000, True, "denied", "bankruptcy_credit_below_minimum"),
    (750, 10_000, True, "conditional", "bankruptcy_review"),
    (750, 40_000, False, "pre_approved", "strong_and_affordable"),
    (750, 41_000, False, "conditional", "loan_to_income_above_limit"),
    (700, 50_000, False, "conditional", "fair_credit_review"),
    (700, 51_000, False, "denied", "does_not_qualify"),
]
MESSAGES = load_messages(HERE / "messages.json")
RULES = load_rules(HERE / "rules.json")


@pytest.mark.parametrize(("credit_score", "loan_amount", "has_bankruptcy", "decision", "code"), REASON_CASES)
def test_the_page_says_what_happens_and_the_email_explains_in_its_own_words(
    activities, credit_score, loan_amount, has_bankruptcy, decision, code
):
    decided = activities.decide(applicant(credit_score, float(loan_amount), 100_000.0, has_bankruptcy))
    assert decided.decision == decision
    page = " ".join([decided.message.message, *decided.message.next_steps])
    # The page: the email is on its way (true from the moment it is shown), nothing else promised.
    assert "We are emailing the details to ada@example.com." in page
    for untrue in ("letter", "explanation", "will contact you", "business days"):
        assert untrue not in page, (untrue, page)
    # The email is the message: it promises no other, and carries the reason in the applicant's words.
    email = decided.email_text
    assert email is not None and email.message and email.next_steps
    said = " ".join([email.message, email.explanation, *email.next_steps])
    for untrue in ("emailing", "letter", "will contact you", "business days"):
        assert untrue not in said, (untrue, said)
    values = {
        "min_credit_score": 600,
        "max_loan_amount": "$500,000",
        "bankruptcy_min_credit_score": 680,
        "prime_max_loan_to_income": "40%",
    }
    assert email.explanation == MESSAGES.reasons[code].format(**values)
    # Never the applicant's own score or income (as whole numbers: thresholds like 600 may appear).
    for secret in (str(credit_score), "100,000", "100000"):
        assert secret not in said, (secret, said)


def test_a_conditional_decision_says_an_agent_reviews_it_whatever_the_contact_answer(activities):
    decided = activities.decide(applicant(750, 41_000.0, 100_000.0))
    assert decided.decision == "conditional"
    # The workflow writes the conditional_review notification at once; the contact question is extra.
    assert decided.message.next_steps[0].startswith("A loan agent has been asked to review your application")
    assert "say so on your application's page" in decided.email_text.next_steps[0]


def test_every_reason_has_its_applicant_text():
    from loans.model import DECISION_REASONS

    assert set(MESSAGES.reasons) == set(DECISION_REASONS)
    assert {code for *_, code in REASON_CASES} == set(DECISION_REASONS)


def test_messages_without_a_reason_text_are_refused(tmp_path):
    messages = json.loads((HERE / "messages.json").read_text())
    del messages["reasons"]["fair_credit_review"]
    path = tmp_path / "messages.json"
    path.write_text(json.dumps(messages))
    with pytest.raises(ValueError, match="fair_credit_review"):
        load_messages(path)


@pytest.mark.parametrize(
    ("credit_score", "loan_amount", "has_bankruptcy", "decision", "reason"),
    [
        (650, 10_000, True, "denied", "bankruptcy with credit score below 680"),
        (750, 10_000, True, "conditional", "prior bankruptcy needs an agent's review"),
        (750, 40_000, False, "pre_approved", "strong credit and affordable loan"),
        (750, 41_000, False, "conditional", "loan-to-income above 0.40"),
        (700, 50_000, False, "conditional", "fair credit needs an agent's review"),
        (700, 51_000, False, "denied", "credit score and loan-to-income do not qualify"),
    ],
)
def test_each_credit_rule_gives_its_reason(activities, credit_score, loan_amount, has_bankruptcy, decision, reason):
    decided = activities.decide(applicant(credit_score, float(loan_amount), 100_000.0, has_bankruptcy))
    assert (decided.decision, decided.reason) == (decision, reason)


def test_amounts_with_cents_keep_them_in_the_message(activities):
    assert "$12,345.67" in activities.decide(applicant(750, 12_345.67, 100_000.0)).message.message
    assert "a loan of $12,345. We" in activities.decide(applicant(750, 12_345.0, 100_000.0)).message.message


def test_compliance_denial_explains_the_limits(activities):
    decision = activities.decide(applicant(550))
    assert decision.decision == "denied_compliance"
    assert decision.reason == "credit score below 600"
    assert activities.decide(applicant(750, 500_001.0, 2_000_000.0)).reason == "loan amount above $500,000"
    assert any("600" in step and "$500,000" in step for step in decision.message.next_steps)


def test_changing_rules_json_changes_decisions(tmp_path):
    rules = json.loads((HERE / "rules.json").read_text())
    rules["prime"]["min_credit_score"] = 760
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps(rules))
    application = applicant(750, 40_000.0, 100_000.0)
    assert decision_for(make_activities(tmp_path / "a"), application) == "pre_approved"
    assert decision_for(make_activities(tmp_path / "b", rules_file), application) == "conditional"


def test_rules_file_with_a_typo_is_refused(tmp_path):
    rules = json.loads((HERE / "rules.json").read_text())
    rules["prime"]["max_loan_to_incme"] = rules["prime"].pop("max_loan_to_income")
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps(rules))
    with pytest.raises(ValueError, match="max_loan_to_incme"):
        load_rules(rules_file)


def test_validate_activity_rejects_invalid_input_non_retryably(activities):
    bad = applicant(credit_score=900, email="not-an-email")
    with pytest.raises(ApplicationError) as raised:
        activities.validate_application(bad)
    assert raised.value.type == INVALID_APPLICATION
    assert raised.value.non_retryable
    assert set(raised.value.details[0]) == {"credit_score", "email"}


def test_validate_activity_normalizes_email(activities):
    validated = activities.validate_application(applicant(email="  Ada@Example.COM "))
    assert validated.email == "ada@example.com"


def outcome_for(application: LoanApplication, decision: str = "conditional") -> LoanOutcome:
    return LoanOutcome(
        workflow_id="loan-abc",
        run_id="run-1",
        submitted_at="2026-11-23T09:00:00.000000+00:00",
        application=application,
        decision=decision,
        reason="test",
        loan_to_income_ratio=0.4,
        message=DecisionMessage("t", "m", []),
        decided_by="worker-test",
    )


def test_persist_is_idempotent_and_keeps_a_recorded_contact_answer(activities):
    outcome = outcome_for(applicant())
    activities.persist_application(PersistRequest(outcome))
    activities.record_contact_preference(ContactPreferenceRequest("loan-abc", "run-1", "yes", "2026-11-23T10:00:00"))
    activities.persist_application(PersistRequest(outcome))  # a retry after the answer

    records, total = activities.store.list_recent(APPLICATIONS)
    assert total == 1
    assert records[0]["contact_preference"] == "yes"
    assert records[0]["decision"] == "conditional"


def test_contact_answer_before_persist_is_retried(activities):
    with pytest.raises(ApplicationError, match="not persisted yet") as raised:
        activities.record_contact_preference(ContactPreferenceRequest("loan-abc", "run-1", "yes", "t"))
    assert not raised.value.non_retryable


def test_agent_notification_is_written_once(activities):
    request = AgentNotificationRequest(outcome_for(applicant()), "conditional_review")
    env = ActivityEnvironment()
    env.run(activities.notify_agent, request)
    env.run(activities.notify_agent, request)  # retried
    notifications, total = activities.store.list_recent(AGENT_NOTIFICATIONS)
    assert total == 1
    assert notifications[0]["kind"] == "conditional_review"
    assert activities.store.get(AGENT_NOTIFICATIONS, f"{record_key('loan-abc', 'run-1')}.conditional_review")
