"""User and group names of numeric ids, looked up once per id (names are stored as bytes)."""

from __future__ import annotations

import grp
import os
import pwd


class Owners:
    def __init__(self) -> None:
        self._users: dict[int, bytes] = {}
        self._groups: dict[int, bytes] = {}

    def names(self, uid: int, gid: int) -> tuple[bytes, bytes]:
        user = self._users.get(uid)
        if user is None:
            try:
                user = os.fsencode(pwd.getpwuid(uid).pw_name)
            except KeyError:
                user = b""
            self._users[uid] = user
        group = self._groups.get(gid)
        if group is None:
            try:
                group = os.fsencode(grp.getgrgid(gid).gr_name)
            except KeyError:
                group = b""
            self._groups[gid] = group
        return user, group
