"""Helpers for the tests (and the development scripts): scratch copies of the project and
local servers started and stopped cleanly (``tests.helpers.project``)."""
