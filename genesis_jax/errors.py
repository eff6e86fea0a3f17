"""The one exception type for mistakes a user can fix (config, paths, data, a run
directory that does not match the config).

Entry points print a UserError as one line and exit non-zero; anything else is a bug
and keeps its traceback. It subclasses ValueError so that callers catching the old
ValueError (notebooks, scripts) still do.
"""


class UserError(ValueError):
    """str(error) is one line that says what is wrong and, where there is one, the fix."""


def write_failure(error: Exception) -> str:
    """A failed file write in one line: 'PATH: the system's reason' where the error says
    both (TensorStore: 'Error writing local file "P" ... [os_error_code='28']'), else the
    first line of the error."""
    import os
    import re

    text = str(error)
    code = re.search(r"os_error_code='?(\d+)", text) if not isinstance(error, OSError) else None
    errno = error.errno if isinstance(error, OSError) else int(code[1]) if code else None
    path = error.filename if isinstance(error, OSError) else (re.search(r'"([^"]+)"', text) or [None, None])[1]
    if errno is not None and path:
        return f"{path}: {os.strerror(errno)}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return first[:300]
