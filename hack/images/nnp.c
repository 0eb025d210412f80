/* The entrypoint of the no-new-privileges test image: installed setuid root, it reports
 * the effective uid it got, which is 0 unless the container forbids privilege gain
 * (prctl PR_SET_NO_NEW_PRIVS makes execve ignore the setuid bit). */
#include <stdio.h>
#include <unistd.h>

int main(void) {
    printf("Effective uid: %d\n", (int)geteuid());
    return 0;
}
