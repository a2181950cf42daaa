"""Errors of the semi-supervised commands: one base, one type per job, each message naming the case or parameter."""


class SemiSupervisedError(ValueError):
    """Bad input to a semi-supervised command (folders, cases, geometry, ids, parameters)."""


class PseudoLabelError(SemiSupervisedError):
    """Bad input to pseudo-labelling (scoring, selection, dataset writing); the message names the case or
    parameter."""
