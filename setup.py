"""The compiled part of podscope (podscope._fast): everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "podscope._fast",
            sources=["src/podscope/native/fast.c", "src/podscope/native/records.c",
                     "src/podscope/native/h2.c", "src/podscope/native/h2engine.c",
                     "src/podscope/native/dbengine.c", "src/podscope/native/db_redis.c",
                     "src/podscope/native/db_memcached.c", "src/podscope/native/db_sql.c",
                     "src/podscope/native/db_postgres.c", "src/podscope/native/db_mysql.c",
                     "src/podscope/native/db_nats.c", "src/podscope/native/links.c"],
            # -iquote: bpf/features.h must not stand in for glibc's <features.h>
            extra_compile_args=["-iquote", "src/podscope/bpf", "-iquote", "src/podscope/bpf/include",
                                "-O2", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers", "-std=gnu11"],
        )
    ],
)
