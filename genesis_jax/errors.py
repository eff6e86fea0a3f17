"""The one exception type for mistakes a user can fix (config, paths, data, a run
directory that does not match the config).

Entry points print a UserError as one line and exit non-zero; anything else is a bug
and keeps its traceback. It subclasses ValueError so that callers catching the old
ValueError (notebooks, scripts) still do.
"""


class UserError(ValueError):
    """str(error) is one line that says what is wrong and, where there is one, the fix."""
