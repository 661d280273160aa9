"""The back end: lowering a checked graph, pass by pass, into a plan an executor runs.

See `pipeline` for the list of passes; each pass is a module with one entry function.
"""
from netdsl.lower.autodiff import Backward, autodiff
from netdsl.lower.pipeline import PASSES, TARGETS, Lowered, Target, lower, scored_values
from netdsl.lower.plan import Loop, Param, Plan, State, Step, build_plan

__all__ = ["lower", "Lowered", "Target", "TARGETS", "PASSES", "scored_values", "Plan", "Step",
           "Loop", "State", "Param", "Backward", "build_plan", "autodiff"]
