"""Framework-neutral solver core: Butcher tableaux, order conditions, step-size control."""

from rkopt.core.control import PIController, dal_step_size
from rkopt.core.tableau import ButcherTableau
from rkopt.core.tableaux import ALIASES, TABLEAUX, get_tableau

__all__ = ["ALIASES", "TABLEAUX", "ButcherTableau", "PIController", "dal_step_size", "get_tableau"]
