"""Attribution: kernel ids (cgroup id, netns inode) -> container -> pod. Done here, once."""
