"""Console logging of the command-line tools: this project's INFO lines, everyone's warnings."""

from absl import logging


class OwnInfoOnly(logging.logging.Filter):
  """Keeps INFO lines of this project and warnings of everyone (orbax logs every file it
  writes at INFO)."""

  def filter(self, record) -> bool:
    return record.levelno >= logging.logging.WARNING or "compress_scaling" in record.pathname


def install() -> None:
  """Adds the filter to absl's handler (ABSLHandler delegates to its python_handler)."""
  logging.get_absl_handler().python_handler.addFilter(OwnInfoOnly())
