"""The guestbook's tests, run in its built image (`environments.build.test_command`)."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import guestbook  # noqa: E402


class PageTest(unittest.TestCase):
    def test_messages_are_escaped(self) -> None:
        page = guestbook.render_page([{"message": "<script>alert(1)</script>"}])
        self.assertIn("&lt;script&gt;", page)
        self.assertNotIn("<script>", page)

    def test_page_names_the_version(self) -> None:
        self.assertIn(f"guestbook {guestbook.VERSION}", guestbook.render_page([]))


if __name__ == "__main__":
    unittest.main(verbosity=2)
