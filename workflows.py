"""The workflows this product runs: the list the worker and the replayer register.

Each half's workflows live in its package (`loans/`, `orders/`); this module
only names them, per task queue, so that a new workflow is registered in one place.
"""

from loans.workflow import LoanApplicationWorkflow
from orders.rewards import RewardsWorkflow
from orders.shipping import ShippingWorkflow
from orders.workflow import OrderWorkflow
from shop.account_email_workflow import AccountEmailWorkflow

# By the task queue whose worker runs them (worker.py).
LOAN_WORKFLOWS = [LoanApplicationWorkflow]
ORDER_WORKFLOWS = [OrderWorkflow, RewardsWorkflow, AccountEmailWorkflow]  # and the shop's account emails
SHIPPING_WORKFLOWS = [ShippingWorkflow]
# Every workflow type a recorded history may name (tools/replay_check.py).
ALL_WORKFLOWS = [*LOAN_WORKFLOWS, *ORDER_WORKFLOWS, *SHIPPING_WORKFLOWS]
