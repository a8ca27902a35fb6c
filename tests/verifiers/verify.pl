#!/usr/bin/perl
# Verifies the DKIM signatures of each message file named on standard
# input (one path per line) with Mail::DKIM, which reads keys through the
# system resolver. Prints "path<TAB>result" per signature.
use strict;
use warnings;
use Mail::DKIM::Verifier;

while (my $path = <STDIN>) {
    chomp $path;
    open(my $fh, '<:raw', $path) or die "$path: $!";
    my $dkim = Mail::DKIM::Verifier->new();
    local $/;
    my $text = <$fh>;
    close $fh;
    $text =~ s/\r?\n/\r\n/g;
    $dkim->PRINT($text);
    $dkim->CLOSE();
    my @sigs = $dkim->signatures;
    print "$path\tnone\n" unless @sigs;
    for my $sig (@sigs) {
        my $detail = $sig->result_detail // '';
        print "$path\t", $sig->result, "\t", $detail, "\n";
    }
}
