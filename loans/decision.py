"""The loan decision: compliance limits first, then the credit rules, each outcome worded for people.

Thresholds come from rules.json, words from messages.json (`decisions` for the
page and the email, `reasons` for why). Pure: the same application and rules
give the same decision, so the decide step is a local activity that is safe to
run again. Every outcome is a decision; a compliance denial is final by nature.
"""

from __future__ import annotations

import math

from core.formatting import format_amount
from core.rules import Messages, Rules
from loans.model import CreditDecision, DecisionEmail, DecisionMessage, LoanApplication


def loan_to_income(application: LoanApplication) -> float | None:
    """Loan / annual income; None stands for infinite (no income).

    Validation bounds keep the ratio finite (an income is 0 or at least 1); the
    isfinite check keeps Infinity out of records and JSON answers even so.
    """
    if application.annual_income == 0:
        return None
    ratio = application.loan_amount / application.annual_income
    return ratio if math.isfinite(ratio) else None


class CreditRules:
    def __init__(self, rules: Rules, messages: Messages):
        self.rules = rules
        self.messages = messages

    def decide(self, application: LoanApplication, decided_by: str) -> CreditDecision:
        decision, code, reason = self._compliance_denial(application) or self._credit_decision(application)
        return self._decision(application, decision, code, reason, decided_by)

    def _compliance_denial(self, application: LoanApplication) -> tuple[str, str, str] | None:
        """(decision, reason code, reason) of a compliance denial, else None."""
        limits = self.rules.compliance
        if application.credit_score < limits.min_credit_score:
            return "denied_compliance", "credit_below_minimum", f"credit score below {limits.min_credit_score}"
        if application.loan_amount > limits.max_loan_amount:
            return ("denied_compliance", "loan_above_maximum", f"loan amount above {format_amount(limits.max_loan_amount)}")
        return None

    def _credit_decision(self, application: LoanApplication) -> tuple[str, str, str]:
        """(decision, reason code, reason): the code names the rule (shared.DECISION_REASONS), the
        reason is the operators' wording; messages.json `reasons` words the code for the applicant."""
        rules = self.rules
        score = application.credit_score
        ratio = loan_to_income(application)
        ratio_at_most = lambda limit: ratio is not None and ratio <= limit  # noqa: E731
        if application.has_bankruptcy and score < rules.bankruptcy.min_credit_score:
            return (
                "denied",
                "bankruptcy_credit_below_minimum",
                f"bankruptcy with credit score below {rules.bankruptcy.min_credit_score}",
            )
        if score >= rules.prime.min_credit_score:
            if application.has_bankruptcy:
                return "conditional", "bankruptcy_review", "prior bankruptcy needs an agent's review"
            if ratio_at_most(rules.prime.max_loan_to_income):
                return "pre_approved", "strong_and_affordable", "strong credit and affordable loan"
            return ("conditional", "loan_to_income_above_limit", f"loan-to-income above {rules.prime.max_loan_to_income:.2f}")
        if score >= rules.near_prime.min_credit_score and ratio_at_most(rules.near_prime.max_loan_to_income):
            return "conditional", "fair_credit_review", "fair credit needs an agent's review"
        return "denied", "does_not_qualify", "credit score and loan-to-income do not qualify"

    def _decision(self, application: LoanApplication, decision: str, code: str, reason: str, decided_by: str) -> CreditDecision:
        """The decision with its texts: the page's, and the email's own (with the reason explained)."""
        text = self.messages.decisions[decision]
        values = {
            "amount": format_amount(application.loan_amount),
            "email": application.email,
            "min_credit_score": self.rules.compliance.min_credit_score,
            "max_loan_amount": format_amount(self.rules.compliance.max_loan_amount),
            "window_days": self.rules.duplicate_window_days,
            "bankruptcy_min_credit_score": self.rules.bankruptcy.min_credit_score,
            "prime_max_loan_to_income": f"{self.rules.prime.max_loan_to_income:.0%}",
        }
        ratio = loan_to_income(application)
        return CreditDecision(
            decision=decision,
            reason=reason,
            loan_to_income_ratio=None if ratio is None else round(ratio, 4),
            message=DecisionMessage(
                title=text.title.format(**values),
                message=text.message.format(**values),
                next_steps=[step.format(**values) for step in text.next_steps],
            ),
            decided_by=decided_by,
            email_text=DecisionEmail(
                message=text.email.message.format(**values),
                explanation=self.messages.reasons[code].format(**values),
                next_steps=[step.format(**values) for step in text.email.next_steps],
            ),
        )
