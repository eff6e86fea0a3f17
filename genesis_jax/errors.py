"""The one exception type for mistakes a user can fix (config, paths, data, a run
directory that does not match the config).

Entry points print a UserError as one line and exit non-zero; anything else is a bug
and keeps its traceback. It subclasses ValueError so that callers catching the old
ValueError (notebooks, scripts) still do.
"""

import os
import re


class UserError(ValueError):
    """str(error) is one line that says what is wrong and, where there is one, the fix."""


def write_failure(error: Exception) -> str:
    """A failed file write in one line: 'PATH: the system's reason' where the error says
    both (TensorStore: 'Error writing local file "P" ... [os_error_code='28']'), else the
    first line of the error."""
    text = str(error)
    if isinstance(error, OSError):
        code, path = error.errno, error.filename
    else:
        found_code, found_path = re.search(r"os_error_code='?(\d+)", text), re.search(r'"([^"]+)"', text)
        code, path = int(found_code[1]) if found_code else None, found_path[1] if found_path else None
    if code is not None and path:
        return f"{path}: {os.strerror(code)}"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return first[:300]
