"""Builds fastgan. The compiled extension fastgan._C is added by csrc/ (see the extension issue);
until its sources exist this is a pure-Python install. FASTGAN_NO_EXT=1 always gives one."""

from setuptools import setup

setup()
