/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Feature probes: nothing is shared with user space but the program names. */
#ifndef PODSCOPE_FEATURES_H
#define PODSCOPE_FEATURES_H
#endif
