/* term.c - raw terminal mode for a console's stdin. */
#include "tsvm.h"

#include <errno.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

int tsvm_isatty(int fd) { return isatty(fd); }

/* Saves the current termios into `saved` and switches `fd` to raw input (output untouched). */
int tsvm_term_raw(int fd, void *saved, uint64_t saved_len)
{
	struct termios t;
	if (saved_len < sizeof(t))
		return -EINVAL;
	if (tcgetattr(fd, &t) < 0)
		return -errno;
	memcpy(saved, &t, sizeof(t));
	t.c_iflag &= ~(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
	t.c_lflag &= ~(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
	t.c_cflag &= ~(CSIZE | PARENB);
	t.c_cflag |= CS8;
	t.c_cc[VMIN] = 1;
	t.c_cc[VTIME] = 0;
	return tcsetattr(fd, TCSANOW, &t) < 0 ? -errno : 0;
}

int tsvm_term_restore(int fd, const void *saved, uint64_t saved_len)
{
	struct termios t;
	if (saved_len < sizeof(t))
		return -EINVAL;
	memcpy(&t, saved, sizeof(t));
	return tcsetattr(fd, TCSANOW, &t) < 0 ? -errno : 0;
}
