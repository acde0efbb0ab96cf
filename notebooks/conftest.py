"""nbval runs the demo notebooks in a kernel that inherits this environment: give it a private home."""

import os
import tempfile

os.environ["DECLOUD_HOME"] = tempfile.mkdtemp(prefix="decloud-nbval-home-")
