"""Variables a shell or a program reads as code: no event's value may set one, no run string assign one."""

from __future__ import annotations

import re

# Variables that a shell or a program it starts reads as code, or as where code, options or settings come
# from.
# Names match exactly, and without regard to case where the program reads them so (npm, yarn, pnpm).
CODE_VARIABLES: tuple[tuple[str, str], ...] = (
    (r"BASH_ENV|ENV", "bash and sh run the file it names"),
    (r"PS[0-4]|PROMPT_COMMAND", "bash expands it as a prompt, running $( ) in it"),
    (r"SHELLOPTS|BASHOPTS", "it sets options of every bash started"),
    (r"BASH_FUNC_[^\s=]*", "bash reads it as a function definition"),
    (r"IFS", "it changes how bash splits words"),
    (r"PATH|LD_\w*|GCONV_PATH", "it chooses the programs and libraries that run"),
    (
        r"HOME|XDG_\w*|SHELL|TERMINFO|OPENSSL_CONF",
        "programs read their configuration (~/.gitconfig, ~/.npmrc, ...) from where it points, or run it",
    ),
    (
        r"GIT_\w*|SSH_ASKPASS|SUDO_ASKPASS|PAGER|EDITOR|VISUAL|LESS\w*|MANPAGER|MANOPT|BROWSER|RSYNC_RSH",
        "git, ssh, sudo, less or man run it as a command, or read settings that are commands",
    ),
    (
        r"TAR_OPTIONS|MAKE\w*|MFLAGS|GNUMAKEFLAGS|ZIPOPT|UNZIP|GZIP|BZIP2|XZ_OPT|ZSTD_\w*",
        "tar, make, zip and the compressors read it as options, some of which run commands",
    ),
    (
        r"CC|CXX|CPP|LD|CFLAGS|CXXFLAGS|CPPFLAGS|LDFLAGS|LDLIBS|RUSTFLAGS|CARGO_\w*|GOFLAGS|JAVA_OPTS",
        "build tools run it as a compiler command, or pass it to one as options",
    ),
    (
        r"NODE_OPTIONS|NODE_PATH|NODE_REPL_EXTERNAL_MODULE|PYTHON\w*|PIP_\w*|PERL\w*|RUBYOPT|RUBYLIB"
        r"|JAVA_TOOL_OPTIONS|_JAVA_OPTIONS|(?i:npm_config_\w*|yarn_\w*|pnpm_\w*)",
        "an interpreter or package manager reads it as options, code to load or settings that run scripts",
    ),
)
CODE_VARIABLE = re.compile("|".join(f"(?:{names})" for names, _ in CODE_VARIABLES))


def code_variable(name: str) -> str | None:
    """Why a variable named ``name`` is read as code, so that no event may set it; or None."""
    for names, why in CODE_VARIABLES:
        if re.fullmatch(names, name):
            return why
    return None
